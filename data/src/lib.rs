//! Cases, splits, the medical knowledge base, PHI redaction, generators, importers and the scripted expert
