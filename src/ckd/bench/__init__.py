"""Tools around the engine: the speed benchmark (``ckd bench speed``), fair multi-seed suites
(``ckd suite``), their reports (``ckd report``) and figures (``ckd plot``)."""
