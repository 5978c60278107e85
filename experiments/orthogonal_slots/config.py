"""The orthogonal-slots study's arms (display name, trainer init) and constants."""

ARMS = {"plain": ("plain LoRA, merged by sum", "hydra_zero"), "slots": ("orthogonal slots, merged by sum",
                                                                          "ortho_out")}
RANK, SLOTS, SAMPLES, SAMPLE_SEED = 8, 4, 16, 4242
