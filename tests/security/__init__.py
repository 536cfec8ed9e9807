"""Security scenarios S1-S14 of RELIABILITY.md section 3.3 (S5, S8 and S15 live in tests/api)."""
