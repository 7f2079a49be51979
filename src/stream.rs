//! stream (work in progress)
