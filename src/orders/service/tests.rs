//! Tests of the orders service's shell: a real store, a fake outbound, paused time.
