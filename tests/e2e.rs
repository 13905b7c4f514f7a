// End-to-end tests of the spar binary.
