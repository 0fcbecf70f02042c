//! postgres: to be written.
