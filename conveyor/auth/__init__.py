"""Authentication and authorisation: tokens, users, principals, roles."""
