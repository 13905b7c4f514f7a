//! Generation engine, consultation environment, patient simulators, segmented pipeline, spar serve
