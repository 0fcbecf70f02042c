//! A real redis-server for tests (Debian's redis-server on a free loopback port).
