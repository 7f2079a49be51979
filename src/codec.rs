//! codec (work in progress)
