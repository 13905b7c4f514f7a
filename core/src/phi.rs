//! PHI redaction (HIPAA Safe Harbor identifiers). Owned by the data work; see `docs/privacy.md`.
//! Applied before any text leaves the process for a non-loopback endpoint and before anything is logged.
