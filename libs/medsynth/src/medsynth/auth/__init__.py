"""Who may do what: API keys and OIDC tokens (who), roles per project and the policy table (what),
the hash-chained audit trail (what was done), and request limits."""
