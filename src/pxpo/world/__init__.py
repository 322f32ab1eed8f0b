"""The bundled world: tiny Stable-Diffusion-architecture models built from configs in code."""
