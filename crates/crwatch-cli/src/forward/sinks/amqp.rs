//! amqp sink: to be written.
