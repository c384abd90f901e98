"""A small battles spec around one activation, for tests of plugins used in specs and runs."""

from __future__ import annotations

import textwrap


def spec_text(plugins: list[str], activation: str, epochs: int = 2) -> str:
    """`plugins` go on line 2, verbatim (tests check the positions of problems there)."""
    return textwrap.dedent(
        f"""\
        name: plugin_spec
        plugins: {plugins}
        seed: 7
        data: {{name: battles, n_samples: 64}}
        model:
          - {{type: linear, in_features: 2, out_features: 4}}
          - {activation}
          - {{type: linear, in_features: 4, out_features: 1}}
        loss: bce_with_logits
        optimizer: {{name: adam, lr: 0.1}}
        train: {{epochs: {epochs}, batch_size: full, device: cpu}}
        tracking: {{log_model: false}}
        """
    )
