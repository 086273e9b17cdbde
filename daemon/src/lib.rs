//! kqd library.
