"""netvis's applications, built from the library and never imported by it.

* :mod:`netvis.app.cli` -- the ``netvis`` command (argument parsing and a lookup in the registries);
* :mod:`netvis.app.demo` -- ``netvis demo``: the whole lecture on the shipped Fashion-MNIST sample;
* :mod:`netvis.app.jobs` -- the jobs behind ``netvis saliency``, ``netvis invert`` and ``netvis examples``
  (load a target, run a library method, write maps, figures and JSON);
* :mod:`netvis.app.render` -- figures and the HTML report;
* :mod:`netvis.app.serve` -- the local web viewer;
* :mod:`netvis.app.experiments` -- the lecture's experiments.

The library (:mod:`netvis.models`, :mod:`netvis.bn`, :mod:`netvis.hooks`, :mod:`netvis.saliency`,
:mod:`netvis.features`, :mod:`netvis.inversion`, :mod:`netvis.data`, :mod:`netvis.train`) imports none of
these; ``make test`` checks it with import-linter.
"""
