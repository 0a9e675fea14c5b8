//! jobworker runtime
