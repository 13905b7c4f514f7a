//! The one OpenAI-compatible HTTP client (timeouts, retries, concurrency, PHI redaction) and spar-core's external-model traits over it
