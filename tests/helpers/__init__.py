"""What the tests share besides fixtures (those are in conftest.py): stand-in trainers and the
gates that pace them, waiting on conditions, test servers, played trials.

tests/ is on sys.path (pytest puts it there, and worker processes get it through
`with_tests_on_path()`), so a sweep's workers load `helpers.trainers.StandInTrainer` by name."""
