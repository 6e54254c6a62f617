"""What real model output writes: thousands separators, several boxes, stated final answers,
GSM8K endings, percent and unit words (``verl_restrain.answers``).

Tables as in ``test_answers.py``: equivalence rows are checked through ``is_correct`` in both
directions and through ``cluster_answers``. The rows on several boxes and on stated final answers
are also checked against Math-Verify reading the same response, since its reading is the rule.
"""

import logging

import pytest

from verl_restrain import answers

from test_answers import assert_equivalence


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # MATH writes large numbers with ",\!" (a comma, then a negative thin space): one number
        ("10,\\!080", "10080", True),
        ("4,\\!096", "4096", True),
        ("2,\\!000,\\!000", "2000000", True),
        ("\\$7,\\!250", "7250", True),
        ("\\$7,\\!250.75", "7250.75", True),
        ("\\frac{9}{1,\\!024}", "\\frac{9}{1024}", True),
        ("44,\\! 444,\\! 400", "44444400", True),
        ("10,\\!080", "10,080", True),
        ("10,\\!080", "10081", False),
        ("10,\\!080", "10, 080", False),
        # A comma after a lone zero is a decimal comma, as Math-Verify reads it
        ("0,375", "0.375", True),
        ("0,375", "\\frac{3}{8}", True),
        ("0,375", "375", False),
        ("3,500", "3500", True),
        ("0, 375", "375", False),
    ],
)
def test_number_separators(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "gold,pred,expected",
    [
        # Percent written as a word is the percent sign
        ("45\\%", "45 percent", True),
        ("45\\%", "45 pct", True),
        ("45\\%", "45percent", True),
        ("45\\%", "45 \\text{percent}", True),
        ("45", "45 percentage", True),
        ("45\\%", "46 percent", False),
        ("45\\%", "0.45", False),
        # A sign before an interval is no number: nothing reads it as the 1 inside
        ("1", "-[0, 1)", False),
        ("2", "-(0, 2]", False),
        ("[0, 1)", "-[0, 1)", False),
    ],
)
def test_percent_words_and_malformed_answers(gold, pred, expected):
    assert_equivalence(gold, pred, expected)


@pytest.mark.parametrize(
    "response,expected",
    [
        # A sentence answer followed by a unit or a noun is the number
        ("The answer is 18 dollars.", "18"),
        ("So the answer is 4 containers per day.", "4"),
        ("The answer is \\$25 dollars.", "25"),
        ("The answer is 2,500 people.", "2500"),
        ("Final answer: 7 apples", "7"),
        # A list stays a list, and prose stays no answer
        ("The answer is 2 and 3.", "2, 3"),
        ("The answer is that we need more data.", None),
    ],
)
def test_sentence_answer_before_a_unit_word(response, expected):
    assert answers.extract_answer(response) == expected


def test_sentence_answer_with_a_unit_word_grades_and_votes():
    assert answers.is_correct("Therefore the answer is 18 dollars.", "18")
    assert answers.cluster_answers(["The answer is 18 dollars.", "\\boxed{18}", "The answer is 19 dollars."]) == [0, 0, 1]


# Several boxes: which of them are one answer. Every row is also what Math-Verify reads.
SEVERAL_BOXES = [
    # Separate math environments are one answer when nothing but "and", "or" or "," is between
    ("The roots are $\\boxed{-4}$ and $\\boxed{7}$.", "-4, 7"),
    ("So $x=\\boxed{2}$ or $x=\\boxed{-6}$.", "2, -6"),
    ("We get $\\boxed{3}$, $\\boxed{8}$.", "3, 8"),
    ("\\[\\boxed{1}\\]\nand\n\\[\\boxed{9}\\]", "1, 9"),
    ("Both \\(\\boxed{5}\\) and \\(\\boxed{11}\\) work.", "5, 11"),
    ("Twice: $\\boxed{6}$ and $\\boxed{6}$", "6"),
    # ... and anything else between them makes the last box the answer: a self-correction
    ("My first try gave $\\boxed{12}$ but I slipped; redoing it, $\\boxed{14}$.", "14"),
    ("Hence $\\boxed{6}$.\n\nWait, let me recount. $\\boxed{7}$", "7"),
    ("Maybe $\\boxed{4}$ $\\boxed{9}$", "9"),
    ("Candidates $\\boxed{4}$; $\\boxed{9}$", "9"),
    ("It is $\\boxed{-4}$, and $\\boxed{7}$", "7"),
    ("So $\\boxed{20}$ and also $\\boxed{30}$.", "30"),
    # Several boxes in one environment are one answer
    ("$\\boxed{2} \\text{ or } \\boxed{5}$", "2, 5"),
    # Math-Verify joins at most six environments into one match, counting from the first
    (" and ".join(f"$\\boxed{{{k}}}$" for k in range(1, 7)), "1, 2, 3, 4, 5, 6"),
    (" and ".join(f"$\\boxed{{{k}}}$" for k in range(1, 8)), "7"),
    # Outside math delimiters, nearness decides: within 10 characters, or 70 with a separator
    ("\\boxed{3} oops \\boxed{8}", "3, 8"),
    ("\\boxed{3}, no, it is \\boxed{8}", "3, 8"),
    ("\\boxed{3}" + " We check this once more, carefully, step by step." * 2 + " \\boxed{8}", "8"),
    # A bare box after one in math is read outside math
    ("$\\boxed{3}$, \\boxed{8}", "3, 8"),
]

# A stated final answer against boxes: Math-Verify's priorities.
FINAL_ANSWER_STATEMENTS = [
    # The Minerva format wins over boxed intermediate results before it ...
    (
        "So $a=\\boxed{150}$ then $b=\\boxed{240}$.\nFinal Answer: The final answer is $390$. I hope it is correct.",
        "390",
    ),
    ("\\boxed{150} and later \\boxed{240}. Final Answer: The final answer is $390$.", "390"),
    ("\\boxed{5}. Hence the final answer is 6.", "6"),
    # ... and with "I hope" over a box after it too
    ("Final Answer: The final answer is $41$. I hope it is correct.\nCheck: \\boxed{40}", "41"),
    # A box after a plain statement wins
    ("The final answer is $41$. Then \\boxed{40}", "40"),
    # "Final answer:" does not outrank a box, nor does prose after "is"
    ("\\boxed{40}. Final answer: 41", "40"),
    ("\\boxed{40}. The final answer is clear from the above.", "40"),
]


def _math_verify_reads(response: str, expected: str) -> bool:
    from math_verify import parse, verify

    logging.disable(logging.WARNING)
    try:
        theirs, ours = parse(response), parse(f"${expected}$")
        return bool(theirs and ours) and verify(ours, theirs) and verify(theirs, ours)
    finally:
        logging.disable(logging.NOTSET)


@pytest.mark.parametrize("response,expected", SEVERAL_BOXES + FINAL_ANSWER_STATEMENTS)
def test_boxes_and_final_answers(response, expected):
    assert answers.extract_answer(response) == expected


@pytest.mark.parametrize("response,expected", SEVERAL_BOXES + FINAL_ANSWER_STATEMENTS)
def test_boxes_and_final_answers_as_math_verify_reads_them(response, expected):
    assert _math_verify_reads(response, expected)


def test_box_spam_is_no_answer():
    chained = " and ".join(f"$\\boxed{{{k}}}$" for k in range(40))
    assert answers.extract_answer(chained) is None
    assert answers.extract_answer("$" + "".join(f"\\boxed{{{k}}}" for k in range(9)) + "$") is None


@pytest.mark.parametrize(
    "response,expected",
    [
        # GSM8K's own answer line, and the "A:" line of its model solutions
        ("She pays 3 * 4 = <<3*4=12>>12 dollars\n#### 12", "12"),
        ("Total is 60 + 12 = <<60+12=72>>72\nA: 72", "72"),
        ("So 1000 + 250 = 1250 people\nA: 1,250\n\n", "1250"),
        ("The pipe fills 3/4 of the tank\n#### 0.75", "0.75"),
        ("He earns $<<5*4=20>>20 a week\nA: $20", "20"),
        ("They have 9 left.\nA: 9 apples", "9"),
        # Only the last line counts, and a box comes first
        ("A: 5\nThen we add one more.", None),
        ("We get \\boxed{8}\n#### 9", "8"),
        ("Answer: 5\nA: 6", "6"),
        # After the marker comes a number: prose, a heading or an answer phrase is not read there
        ("A: The train is late.", None),
        ("We add them up.\n#### Step 3", None),
        ("We add them up.\n#### Answer: 42", "42"),
        ("A: x = 5", None),
    ],
)
def test_gsm8k_final_lines(response, expected):
    assert answers.extract_answer(response) == expected


def test_gsm8k_solutions_vote_and_grade():
    solutions = [
        "16 - 3 - 4 = <<16-3-4=9>>9 eggs are left\n9 * 2 = $<<9*2=18>>18\nA: 18",
        "She sells 13 eggs for $2 each: 13 * 2 = $<<13*2=26>>26\nA: 26",
        "9 eggs at $2 make $18.\n#### 18",
        "No idea.",
    ]
    assert answers.cluster_answers(solutions) == [0, 1, 0, -1]
    assert [answers.is_correct(solution, "18") for solution in solutions] == [True, False, True, False]
