//! spar eval: consultation evaluation, HealthBench runner, hallucination rate, reports
