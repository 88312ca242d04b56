"""attention_share: the fraction of causal attention that chosen query rows give to a set of keys."""
