//! command (work in progress)
