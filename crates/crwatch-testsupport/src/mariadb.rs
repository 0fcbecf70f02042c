//! mariadb: to be written.
