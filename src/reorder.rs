//! reorder (work in progress)
