// Scoring tests
