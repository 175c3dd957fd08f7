"""The shipped Hydra configs: a package only so that the wheel carries them and Hydra finds them (pkg://)."""
