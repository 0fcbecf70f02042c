//! rabbitmq: to be written.
