"""The stages of the pipeline, one readable `main(cfg)` each: sft, reward_model, ppo."""
