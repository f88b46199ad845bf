"""Exercises for the lesson notebooks: register them, check a learner's function, show solutions.

An exercise pairs a function the learner writes with the package's own implementation of the
same thing. ``check`` runs both on several random trials (different shapes and dtypes, edge
cases included) and compares; when the learner's answer is wrong it looks for the *kind* of
wrong it is: every exercise registers the usual mistakes as small wrong implementations, and an
answer that matches one of them on every trial gets that mistake's hint.

    # in gemma_lab/exercises/lesson02_embeddings_and_rmsnorm.py, once per exercise
    exercise("rms_norm", make_inputs=rms_norm_inputs, reference=rms_norm_reference,
             mistakes={"Is your epsilon inside the square root?": rms_norm_eps_outside},
             notebook="02_embeddings_and_rmsnorm")

    # in a notebook
    def rms_norm(x, weight, eps):          # cell tagged "exercise", metadata {"exercise": "rms_norm"}
        raise NotImplementedError
    check("rms_norm", rms_norm)            # next cell: "not attempted yet", then ✔ or ✘ with a hint
    solution("rms_norm")                   # a collapsed "Solution" block, from notebooks/for_instructors/solutions/

The API (relied upon by every lesson notebook and their tests):

``exercise(name, *, make_inputs, reference, mistakes=None, compare=None, notebook=None, trials=6)``
    Register an exercise. ``make_inputs(generator) -> tuple`` builds one trial's arguments from a
    seeded ``torch.Generator``; trial ``t`` uses seed ``t`` (``trial_number(generator)``), so
    ``make_inputs`` can make the first trials deliberate edge cases. ``reference(*inputs)`` is
    the package's implementation. ``mistakes`` maps a hint (a question to the learner) to a
    wrong implementation with the reference's signature. ``compare(got, expected) -> bool``
    replaces the default comparison (``outputs_match``: same structure, shapes and dtypes, values
    within a dtype-dependent tolerance). ``notebook`` is the stem of the lesson (and of its
    solution file), e.g. ``"02_embeddings_and_rmsnorm"``.
``check(name, fn) -> CheckResult``
    ``.passed``, ``.status`` ("passed", "failed", "error" or "not attempted"), ``.message``,
    ``.hint``. A function that raises ``NotImplementedError`` is "not attempted", not an error, so
    a notebook with untouched stubs runs top to bottom. Shown as HTML in Jupyter, text elsewhere.
``solution(name) -> str``
    The solution's source, read from ``notebooks/for_instructors/solutions/<notebook>.py`` (one function per
    exercise, named like the exercise). Displayed in Jupyter as a collapsed block.
``list_exercises(notebook=None) -> list[str]``, ``get_exercise(name) -> Exercise``
``fill_in_solutions(nb) -> int``
    For notebook tests: replace the source of every cell tagged ``exercise`` by its solution.

Layout: ``checking.py`` is the framework (this module re-exports its API); each lesson's exercises
are in ``lesson<NN>_<notebook>.py`` (``lesson04_attention.py`` holds lesson 04's), imported on
first use, so adding a file is all it takes to add exercises; ``_trials.py`` holds the input makers
and small models several lessons share.

This package imports torch and the standard library only; the lesson modules import the model.
"""

from gemma_lab.exercises.checking import *  # noqa: F403  (the API: checking.__all__)
from gemma_lab.exercises.checking import (  # noqa: F401  (constants the notebooks' tests read)
    DEFAULT_TRIALS,
    ERROR,
    EXERCISE_KEY,
    EXERCISE_TAG,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    TOLERANCES,
    __all__,  # noqa: F401
    describe_inputs,
)
