"""Shared checks for every saved, seeded component (the shape of diffusers' tester mixins).

A component test subclasses ``ComponentTester`` and says how to make its component from a seed, how to save
and load it back in its ecosystem's format, and how to run it on inputs in batches of a given size. The
checks themselves are written once, here:

- a saved and reloaded component gives the outputs the original gave;
- the same seed makes the same component, another seed a different one;
- outputs do not depend on the batch size (the Ray stages re-batch freely, and provenance regenerates
  one image at a time).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class ComponentTester:
    batch_tolerance = 1e-5  # CPU kernels may sum in another order for another batch size
    # pytest collects the subclasses (Test...), never this base

    def inputs(self) -> list:
        raise NotImplementedError

    def make(self, seed: int, workdir: Path):
        raise NotImplementedError

    def reload(self, component, workdir: Path):
        """Save ``component`` in its ecosystem's format under ``workdir`` and load it back."""
        raise NotImplementedError

    def outputs(self, component, inputs: list, batch_size: int) -> np.ndarray:
        raise NotImplementedError

    def test_saved_and_reloaded_gives_the_same_outputs(self, tmp_path):
        inputs = self.inputs()
        original = self.make(0, tmp_path / "made")
        expected = self.outputs(original, inputs, len(inputs))
        again = self.outputs(self.reload(original, tmp_path / "saved"), inputs, len(inputs))
        np.testing.assert_allclose(again, expected, rtol=0, atol=1e-6)

    def test_the_seed_fixes_the_component(self, tmp_path):
        inputs = self.inputs()
        first = self.outputs(self.make(0, tmp_path / "a"), inputs, len(inputs))
        same = self.outputs(self.make(0, tmp_path / "b"), inputs, len(inputs))
        other = self.outputs(self.make(1, tmp_path / "c"), inputs, len(inputs))
        np.testing.assert_array_equal(same, first)
        assert not np.allclose(other, first), "another seed made the same component"

    def test_outputs_do_not_depend_on_the_batch_size(self, tmp_path):
        inputs = self.inputs()
        assert len(inputs) >= 3
        component = self.make(0, tmp_path / "made")
        together = self.outputs(component, inputs, len(inputs))
        one_by_one = self.outputs(component, inputs, 1)
        assert together.shape[0] == len(inputs)
        np.testing.assert_allclose(one_by_one, together, rtol=0, atol=self.batch_tolerance)
