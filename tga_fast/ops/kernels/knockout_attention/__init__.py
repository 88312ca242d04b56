"""knockout_attention: causal attention in which blocked keys are invisible to every later query."""
