//! kq schema.
