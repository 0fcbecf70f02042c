//! A real mosquitto broker for tests (Debian's mosquitto on a free loopback port).
