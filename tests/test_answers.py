"""Answer extraction, canonical forms and equivalence voting (``verl_restrain.answers``).

Tables follow Math-Verify's ``tests/test_all.py``: gold, prediction, expected, grouped by comments.
Every equivalence row is checked through ``is_correct`` in both directions and through
``cluster_answers``, so grading and voting cannot disagree.
"""

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verl_restrain import answers
from verl_restrain.answers.numeric import numeric_verdict

ROOT = Path(__file__).resolve().parents[1]


def boxed(answer: str) -> str:
    return f"Some reasoning first. Therefore the final answer is $\\boxed{{{answer}}}$."


def assert_equivalence(gold: str, pred: str, expected: bool) -> None:
    assert answers.is_correct(boxed(pred), gold) is expected
    assert answers.is_correct(boxed(gold), pred) is expected
    ids = answers.cluster_answers([boxed(gold), boxed(pred)])
    assert (ids == [0, 0]) is expected, ids


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # Fractions, decimals and their spellings
        ("1/2", "0.5", True),
        ("\\frac{1}{2}", "0.5", True),
        ("\\frac{1}{2}", "\\dfrac12", True),
        ("\\frac{1}{2}", "\\tfrac{1}{2}", True),
        ("\\frac{1}{2}", "\\frac 1 2", True),
        ("\\frac{10}{4}", "\\frac{5}{2}", True),
        ("3/2", "1.5", True),
        ("0.50", ".5", True),
        ("2", "2.0", True),
        ("1/2", "1/3", False),
        ("0.5", "0.05", False),
        # Signs
        ("-\\frac{1}{2}", "\\frac{-1}{2}", True),
        ("-1/2", "-0.5", True),
        ("3", "+3", True),
        ("1/2", "-1/2", False),
        ("-3", "3", False),
        # Decimals compare at 6 places when one side is a decimal, as in Math-Verify
        ("1/3", "0.333333", True),
        ("1/3", "0.3333", False),
        ("0.0000001", "0.0000002", True),
        ("2.5", "2.4999999", True),
        ("2.5", "2.49999", False),
    ],
)
def test_fractions_decimals_signs(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # Radicals
        ("\\frac{\\sqrt{2}}{2}", "\\sqrt{2}/2", True),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{\\sqrt2}{2}", True),
        ("\\frac{\\sqrt{2}}{2}", "\\frac{1}{\\sqrt{2}}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\sqrt[3]{8}", "2", True),
        ("\\sqrt{2}", "1.414214", True),
        ("\\sqrt{2}", "1.41", False),
        ("\\sqrt{3}", "\\sqrt{2}", False),
        ("3\\sqrt{3}", "\\sqrt{27}", True),
        # Pi and e
        ("2\\pi", "\\pi \\cdot 2", True),
        ("\\frac{\\pi}{2}", "\\pi/2", True),
        ("\\pi", "3.141593", True),
        ("\\pi", "3.14159", False),
        ("\\pi r^2", "r^2\\pi", True),
        ("\\frac{1}{e}", "e^{-1}", True),
        ("e^{2}", "\\exp(2)", True),
        ("e^{2}", "\\exp(3)", False),
    ],
)
def test_radicals_and_pi(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # A bare number with separators is one number
        ("1000", "1,000", True),
        ("1000", "1{,}000", True),
        ("1000", "1\\,000", True),
        ("1000", "1\\!000", True),
        ("1234567", "1,234,567", True),
        ("1000.5", "1,000.5", True),
        ("1000", "\\$1,000", True),
        ("7425000", "7,425,000", True),
        # Anything else with commas is a list
        ("1000", "1, 000", False),
        ("123", "1,23", False),
        ("12", "(1,2)", False),
        ("1,234", "1234", True),
    ],
)
def test_thousands_separators(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        ("12345678901234567890", "12345678901234567891", False),
        ("12345678901234567890", "12345678901234567890", True),
        ("12345678901234567890", "12,345,678,901,234,567,890", True),
        ("12345678901234567890", "12345678901234567890.0", True),
        ("2^{100}", "1267650600228229401496703205376", True),
        ("2^{100}", "1267650600228229401496703205377", False),
        ("10^{30}", "1000000000000000000000000000001", False),
        ("123456789012345678901234567890", "123456789012345678901234567890.000001", False),
    ],
)
def test_large_integers_never_merge_through_rounding(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # Tuples and intervals: order and bracket kind matter
        ("(1, 2)", "(1,2)", True),
        ("(1, 2)", "\\left( 1, 2 \\right)", True),
        ("(1, 2)", "(2, 1)", False),
        ("(1, 2)", "[1, 2]", False),
        ("(\\frac{1}{2}, 3)", "(0.5, 3)", True),
        ("(1, 2, 3)", "(1, 2)", False),
        ("[0, 1)", "\\left[0,1\\right)", True),
        ("[0, 1)", "(0, 1]", False),
        ("(-\\infty, 3]", "(-\\infty,3]", True),
        # Sets and lists: order does not matter
        ("\\{1, 2\\}", "2, 1", True),
        ("1, 2", "1 \\text{ and } 2", True),
        ("2, 3", "3 \\text{ or } 2", True),
        ("1, 2", "1, 3", False),
        ("3", "(1, 2)", False),
    ],
)
def test_tuples_intervals_sets(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # A single-symbol assignment is its right-hand side
        ("3", "x=3", True),
        ("3", "x = 3", True),
        ("\\frac{1}{2}", "k = \\frac{1}{2}", True),
        ("3", "x = 2 + 1 = 3", True),
        ("30", "\\theta = 30", True),
        ("7", "a_1 = 7", True),
        ("y=2x+3", "2x+3", True),
        # The variable name is dropped, so these vote together (Math-Verify alone would not join
        # x=3 and y=3, yet joins each with 3, so a group holding all three merges anyway)
        ("x=3", "y=3", True),
        ("3", "x=4", False),
        # Equations that are not a single assignment stay equations
        ("2x+z=1", "1", False),
        ("x=1, y=2", "1", False),
        # One-variable bounds
        ("x \\ge 3", "3 \\le x", True),
        ("x \\geq 3", "x \\ge 3", True),
        ("x \\ge 3", "x > 3", False),
        ("x \\ge 3", "x \\ge 4", False),
    ],
)
def test_assignments_and_relations(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # Degrees
        ("90", "90^\\circ", True),
        ("90", "90^{\\circ}", True),
        ("90", "90°", True),
        ("30", "\\theta = 30^\\circ", True),
        ("\\frac{\\pi}{2}", "90^\\circ", False),
        # Units and text decorations
        ("5", "5 \\text{ cm}", True),
        ("5", "5\\text{ cm}^2", True),
        ("5", "5\\mbox{ meters}", True),
        # \mathrm, \textrm, ... units, dropped as Math-Verify drops them (it reads them as \text)
        ("5", "5\\,\\mathrm{cm}", True),
        ("5", "5\\mathrm{~cm}", True),
        ("5", "5\\,\\mathrm{m}", True),
        ("5", "5\\ \\mathrm{cm}", True),
        ("5", "5\\,\\mathrm{m}^2", True),
        ("5", "5\\,\\mathrm{m^2}", True),
        ("5", "5\\textrm{ cm}", True),
        ("10", "10\\,\\mathrm{m/s}", True),
        ("\\frac{1}{2}", "\\frac{1}{2}\\,\\mathrm{kg}", True),
        ("5", "6\\,\\mathrm{cm}", False),
        # ... but \mathrm{i} and \mathrm{e} are constants (Math-Verify drops them too, as units)
        ("3+2i", "3+2\\mathrm{i}", True),
        ("2e^{2}", "2\\mathrm{e}^{2}", True),
        # Unit words after a number, as a sentence answer writes them
        ("5", "5 cm", True),
        ("5", "5 km", True),
        ("2", "2 hours", True),
        ("1000", "1,000 km", True),
        ("5", "6 cm", False),
        ("\\text{Evelyn}", "Evelyn", True),
        ("\\text{Evelyn}", "\\textbf{Evelyn}", True),
        ("5", "\\mathbf{5}", True),
        ("3+2i", "3+2\\text{i}", True),
        # Percent: the number of percent, so 50% votes with 50, not with 0.5
        ("50", "50\\%", True),
        ("50", "50%", True),
        ("0.5", "50\\%", False),
        # Trailing punctuation, enclosing braces, layout commands
        ("3", "3.", True),
        ("3", "{3}", True),
        ("\\frac{1}{2}", "\\displaystyle\\frac{1}{2}", True),
        ("5", "\\;5\\,", True),
    ],
)
def test_degrees_text_and_decorations(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        ("(x+1)^2", "x^2+2x+1", True),
        ("(x+1)^2", "x^{2} + 2 x + 1", True),
        ("(x+1)^2", "x^2+1", False),
        ("2(x+1)", "2x+2", True),
        ("(x+1)(x-1)", "x^2-1", True),
        ("\\frac{x^2-1}{x-1}", "x+1", True),
        ("x+1", "y+1", False),
        ("3", "n+2", False),
        # Real variables: sqrt(x^2) is |x|, not x (decided by Math-Verify)
        ("\\sqrt{x^2}", "x", False),
        ("\\sqrt{x}", "x^{1/2}", True),
    ],
)
def test_expressions_with_variables(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "response,expected",
    [
        # The last box wins; braces are matched
        ("So the answer is \\boxed{5}.", "5"),
        ("We get \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{2}}{2}}", "\\frac{\\sqrt{2}}{2}"),
        ("First guess \\boxed{3}." + " Let me recheck this computation carefully." * 3 + " \\boxed{5}", "5"),
        ("\\fbox{7}", "7"),
        ("\\boxed 7 is it", "7"),
        ("\\boxed{\\boxed{7}}", "7"),
        ("$\\boxed{1,000}$", "1000"),
        ("\\boxed{x = 3}", "3"),
        ("\\boxed{\\{1,2\\}}", "\\{1, 2\\}"),
        # Several boxes side by side are one answer (Math-Verify's rule)
        ("The roots are \\boxed{2} and \\boxed{3}.", "2, 3"),
        ("\\boxed{2}, \\boxed{3}", "2, 3"),
        ("\\boxed{5} \\boxed{5}", "5"),
        ("".join(f"\\boxed{{{i}}}" for i in range(9)), None),
        # Unclosed or empty boxes are skipped
        ("\\boxed{5}. Wait, let me redo: \\boxed{\\frac{1", "5"),
        ("\\boxed{}", None),
        ("\\boxed{ }", None),
        ("\\boxed", None),
        ("\\boxed\\boxed\\boxed", None),
        ("The answer is \\boxed{\\frac{1}{2}", None),
        # Without a box: the answer sentence
        ("The final answer is $\\frac{1}{2}$. I hope it is correct.", "\\frac{1}{2}"),
        ("So the answer is 42.", "42"),
        ("The final answer is 5 cm.", "5"),
        ("The final answer is $5\\,\\mathrm{cm}$.", "5"),
        ("**Final Answer:** 12", "12"),
        ("Answer: 0.5.", "0.5"),
        ("The answer is \\(x = 3\\)", "3"),
        ("The answer is that we need more information.", None),
        ("Hence answer is 13.", "13"),
        ("My answer is $7$", "7"),
        ("**Final Answer**\n42", "42"),
        ("**Final Answer**\n\n$\\frac{1}{2}$", "\\frac{1}{2}"),
        ("Final Answer\nWe still need more work.", None),
        ("Whether the answer is correct is unclear.", None),
        # Empty or absent answers
        ("", None),
        ("I do not know.", None),
        ("$$ $$", None),
    ],
)
def test_extract_math(response, expected):
    assert answers.extract_answer(response) == expected


@pytest.mark.parametrize(
    "response,expected",
    [
        ("\\boxed{B}", "B"),
        ("\\boxed{\\text{(B)}}", "B"),
        ("\\boxed{\\textbf{C}}", "C"),
        ("\\boxed{(d)}", "D"),
        ("\\boxed{B. 42 m/s}", "B"),
        ("\\boxed{J}", "J"),
        ("The correct answer is (B).", "B"),
        ("Answer: C", "C"),
        ("**Answer:** D", "D"),
        ("the answer is option A", "A"),
        ("After all this, the answer is (c).", "C"),
        ("Reasoning...\n\n(B)", "B"),
        ("Reasoning...\n**C**", "C"),
        ("\\boxed{42}\nAnswer: D", "D"),
        # The last statement wins
        ("The answer is A. Wait, no. The answer is B.", "B"),
        # A bare letter after "answer" stands alone: end, line break, punctuation, closing bracket
        ("Answer: A", "A"),
        ("The answer is I.", "I"),
        ("Answer: B, since the others fail.", "B"),
        ("The answer is D) 12 m/s", "D"),
        ("The correct answer is B\n\nThis follows from the first law.", "B"),
        ("Answer: (C) because of symmetry", "C"),
        ("Answer - E!", "E"),
        ("Final: C", "C"),
        # B-H and J before a lower-case word (A and I are English words)
        ("The answer is B because the force doubles.", "B"),
        ("Answer: C since only it is conserved", "C"),
        # ... not when it starts a word or a sentence
        ("Answer: I think it's B", None),
        ("In the answer I gave, B is wrong. Final: C", "C"),
        ("The answer is A train leaves the station.", None),
        ("The answer is A good guess would be 5.", None),
        ("Answer: Both are possible", None),
        # Not an option letter
        ("\\boxed{K}", None),
        ("A train leaves the station.", None),
        ("the answer is a prime number", None),
        ("", None),
    ],
)
def test_extract_choice(response, expected):
    assert answers.extract_answer(response, "choice") == expected


@pytest.mark.parametrize(
    "gold,response,expected",
    [
        ("B", "\\boxed{B}", True),
        ("(B)", "Answer: B", True),
        ("b", "The answer is (B).", True),
        ("\\text{B}", "Final line\n(B)", True),
        ("B", "The answer is (C).", False),
        ("B", "no letter here", False),
        ("not a letter", "\\boxed{B}", False),
        ("\\boxed{B}", "Answer: B", True),
        ("The answer is (B).", "\\boxed{B}", True),
    ],
)
def test_choice_is_correct(gold, response, expected):
    assert answers.is_correct(response, gold, "choice") is expected


def test_cluster_ids_by_first_appearance():
    responses = [
        boxed("7"),
        "no answer at all",
        boxed("\\frac{1}{2}"),
        boxed("0.5"),
        boxed("x = 7"),
        boxed("1/2"),
        boxed("\\dfrac12"),
        boxed("9"),
    ]
    # 7 first (id 0), then 1/2 (id 1), then 9 (id 2); the unanswered response is -1
    assert answers.cluster_answers(responses) == [0, -1, 1, 1, 0, 1, 1, 2]


def test_cluster_choice_letters():
    responses = ["\\boxed{B}", "Answer: (b)", "The answer is C.", "nothing", "\\boxed{\\text{(B)}}"]
    assert answers.cluster_answers(responses, "choice") == [0, 0, 1, -1, 0]


def test_unknown_kind_is_a_configuration_error():
    for call in (
        lambda: answers.extract_answer("\\boxed{1}", "maths"),
        lambda: answers.canonicalize("1", "maths"),
        lambda: answers.same_answer("1", "1", "maths"),
        lambda: answers.cluster_answers(["\\boxed{1}"], "maths"),
    ):
        with pytest.raises(ValueError, match="unknown answer kind"):
            call()


def test_non_strings_are_no_answer():
    assert answers.extract_answer(None) is None
    assert answers.canonicalize(3) is None
    assert answers.same_answer(None, "3") is False
    assert answers.cluster_extracted([None, "", "3", None]) == [-1, -1, 0, -1]
    assert answers.is_correct(None, "3") is False


# Answers of known classes: the partition must come out exactly, whatever the order.
CLASSES = {
    "\\frac{1}{2}": "half",
    "0.5": "half",
    "1/2": "half",
    "3": "three",
    "3.0": "three",
    "(1, 2)": "pair",
    "\\frac{\\sqrt{2}}{2}": "root",
    "\\frac{1}{\\sqrt{2}}": "root",
    "\\sqrt{2}/2": "root",
    "12345678901234567890": "big",
    "12345678901234567891": "big+1",
    "x^2+2x+1": "square",
    "(x+1)^2": "square",
}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from([None, ""] + sorted(CLASSES)), max_size=24))
def test_cluster_ids_partition_property(pool):
    ids = answers.cluster_extracted(pool)
    assert len(ids) == len(pool)
    for answer, cluster in zip(pool, ids):
        assert (cluster == -1) == (answer in (None, ""))
    # ids are 0, 1, 2, ... in order of first appearance
    first_seen = []
    for cluster in ids:
        if cluster >= 0 and cluster not in first_seen:
            first_seen.append(cluster)
    assert first_seen == list(range(len(first_seen)))
    # same id exactly when same class (equal strings in particular)
    for i, a in enumerate(pool):
        for j, b in enumerate(pool):
            if a and b:
                assert (ids[i] == ids[j]) == (CLASSES[a] == CLASSES[b]), (a, b)


_ATOMS = ["1", "2", "3", "12", "0.5", "\\pi", "\\sqrt{2}", "\\sqrt{3}", "\\frac{1}{2}", "\\frac{3}{4}", "x", "y"]


@st.composite
def expressions(draw, depth=2):
    if depth == 0 or draw(st.booleans()):
        return draw(st.sampled_from(_ATOMS))
    left, right = draw(expressions(depth=depth - 1)), draw(expressions(depth=depth - 1))
    form = draw(st.sampled_from(["{}+{}", "{}-{}", "{}\\cdot {}", "\\frac{{{}}}{{{}}}", "({})^{{2}}", "({}+{})"]))
    return form.format(left, right) if form.count("{}") == 2 else form.format(left)


# Rewrites that keep the value, so that equal pairs are drawn as often as unequal ones.
_SAME_VALUE = ["({})+0", "0+({})", "2\\cdot ({})-({})", "\\frac{{3\\cdot ({})}}{{3}}", "1\\cdot ({})", "(({}))"]


@st.composite
def expression_pairs(draw):
    a = draw(expressions())
    if draw(st.booleans()):
        return a, draw(expressions())
    form = draw(st.sampled_from(_SAME_VALUE))
    return a, form.format(*[a] * form.count("{}"))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(expression_pairs())
def test_numeric_shortcut_agrees_with_math_verify(pair):
    """Wherever the sympy-free verdict is given, it is Math-Verify's verdict (both directions)."""
    from math_verify import parse, verify

    a, b = pair
    verdict = numeric_verdict(a, b)
    if verdict is None:
        return
    logging.disable(logging.WARNING)
    try:
        gold, pred = parse(f"${a}$"), parse(f"${b}$")
        expected = verify(gold, pred) and verify(pred, gold)
    finally:
        logging.disable(logging.NOTSET)
    assert verdict == expected, (a, b)


@pytest.mark.parametrize(
    "a,b",
    [
        ("\\frac{7}{3}", "2.333333"),
        ("-\\frac{1}{2}", "-0.5"),
        ("0.5", "\\frac{1}{2}"),
        ("1.0000004", "1"),
        ("\\sqrt{2}\\pi", "4.442883"),
        ("(1, 2)", "(1.0, 2)"),
        ("(1, 2)", "(2, 1)"),
        ("\\{1, 2\\}", "2, 1"),
        ("x \\ge 3", "3 \\le x"),
        ("x \\ge 3", "x > 3"),
        ("x \\ge 3", "y \\ge 3"),
        ("(x+1)^2", "x^{2}+2x+1"),
        ("\\frac{x^2-1}{x-1}", "x+1"),
        ("2^{100}", "1267650600228229401496703205376"),
        ("e^{2}", "e^2"),
    ],
)
def test_numeric_shortcut_cases_agree_with_math_verify(a, b):
    from math_verify import parse, verify

    verdict = numeric_verdict(a, b)
    assert verdict is not None
    logging.disable(logging.WARNING)
    try:
        gold, pred = parse(f"${a}$"), parse(f"${b}$")
        assert verdict == (verify(gold, pred) and verify(pred, gold))
    finally:
        logging.disable(logging.NOTSET)


_LATEX_PIECES = ["\\frac", "\\dfrac", "{", "}", "1", "2", "x", "=", ",", " ", "\\text{", "cm", "\\%", "^\\circ",
                 "\\left(", "\\right)", "(", ")", ".", "$", "\\boxed{", "and", "\\sqrt", "-", "+", "000", "\\,"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_LATEX_PIECES), max_size=14).map("".join))
def test_canonicalize_is_idempotent(text):
    once = answers.canonicalize(text)
    if once is not None:
        assert answers.canonicalize(once) == once


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_extraction_never_raises(text):
    for kind in answers.KINDS:
        result = answers.extract_answer(text, kind)
        assert result is None or isinstance(result, str)
        answers.canonicalize(text, kind)


def test_benchmark_script_runs_small():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_answers.py"), "--groups", "3", "--group-size", "4"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "same partitions: 3/3 groups" in result.stdout
    assert "speed-up:" in result.stdout
    assert "speed-up bar: 50x" in result.stdout


def test_benchmark_script_fails_when_the_speedup_bar_is_missed():
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_answers.py"), "--groups", "1", "--group-size", "2",
         "--min-speedup", "1e9"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "speed-up bar: 1e+09x: MISSED" in result.stdout
    assert "same partitions: 1/1 groups" in result.stdout
