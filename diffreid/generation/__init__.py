"""Generation stage: LPE prompts and captioners, the attribute reference set, identity adapters, sampler."""
