//! Rubric, step and fact verifiers, stage rewards and every advantage estimator (no libtorch)
