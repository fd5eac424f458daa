"""lzn_jax: Latent Zoning Networks in JAX/Flax.

Rooms: `zoning` (the latent zoning kernel, pure jnp), `losses` (zoning losses), `models` (one file per
architecture), `tasks` (one pure loss + evals per composition), `data`, `evaluators`, `train` (the loop),
`main` (flags only), `api` (pure inference functions).
"""

__version__ = "0.1.0"
