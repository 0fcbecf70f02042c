//! file sink: to be written.
