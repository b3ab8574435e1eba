"""Generator training: configuration, the one checkpoint format, and the joint image + mask GAN loop."""
