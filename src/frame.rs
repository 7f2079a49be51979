//! frame (work in progress)
