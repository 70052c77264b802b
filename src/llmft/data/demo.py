"""A deterministic generator of small raw datasets in the real published formats (Alpaca, Super-NaturalInstructions,
Unnatural Instructions core), so the whole pipeline can run without downloading anything.

Every task type is a pure function `make_<task>(rng) -> (input, output)` with one short, unambiguous answer. The
registry assigns each type to one format; a few natural-instructions tasks are held out as test tasks, each a sibling
of a trained type (uppercase a word -> uppercase a sentence, add two numbers -> add three), so transfer is plausible.
The files then go through the same converters as real data. The multi-turn chat source is demo_chat.py's.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llmft.io import atomic_write

# ------------------------------------------------------------------ vocabulary (embedded: nothing is downloaded)

NOUNS = (
    "apple", "garden", "window", "river", "candle", "pencil", "rocket", "button", "basket", "forest",
    "mirror", "ticket", "blanket", "dragon", "kitten", "market", "pillow", "saddle", "tunnel", "wagon",
    "bottle", "castle", "desert", "engine", "finger", "hammer", "island", "jacket", "ladder", "meadow",
    "needle", "orange", "parrot", "rabbit", "silver", "tomato", "violin", "walnut", "yellow", "zipper",
    "lamp", "house", "cloud", "bread", "chair", "table", "stone", "train", "plant", "horse",
    "anchor", "banana", "carpet", "doctor", "eagle", "feather", "guitar", "helmet", "igloo", "jungle",
    "kettle", "lemon", "monkey", "napkin", "ocean", "pepper", "radio", "sandal", "tiger", "umbrella",
    "valley", "wallet", "bucket", "cactus", "dolphin", "farmer", "glove", "honey", "insect", "jelly",
    "koala", "lizard", "magnet", "nickel", "onion", "pumpkin", "quilt", "robot", "spoon", "turtle",
    "vase", "whale", "beach", "cookie", "drum", "fence", "goose", "kite", "mango", "nest",
    "panda", "ring", "shoe", "tent", "wheel", "brick", "coin", "duck", "frog", "hat",
    "key", "lion", "moon", "owl", "pear", "rose", "ship", "tree", "wolf", "boat",
    "cake", "deer", "fork", "gate", "leaf", "milk", "nail", "pond", "road", "sock",
    "bench", "camel", "daisy", "flute", "grape", "heart", "juice", "knife", "llama", "mouse",
)
VOWEL_WORDS = tuple(w for w in dict.fromkeys(NOUNS) if w[0] in "aeiou") + (
    "album", "arrow", "acorn", "elbow", "easel", "ivory", "otter", "uncle", "oven", "echo",
    "atlas", "ember", "icicle", "oyster", "eraser", "oak", "ostrich", "apron", "alley", "elk",
)
CONSONANT_WORDS = tuple(w for w in dict.fromkeys(NOUNS) if w[0] not in "aeiou")
ADJECTIVES = (
    "red", "blue", "green", "small", "quiet", "happy", "warm", "cold", "bright", "dark",
    "soft", "tall", "old", "young", "fast", "slow", "round", "sweet", "heavy", "light",
)
VERBS = ("sleeps", "runs", "waits", "sings", "falls", "shines", "rests", "moves", "grows", "jumps")
NAMES = (
    "Maria", "Oliver", "Hannah", "Lucas", "Sofia", "Daniel", "Emma", "Noah", "Clara", "Felix",
    "Nora", "Oscar", "Julia", "Peter", "Laura", "Simon", "Alice", "Henry", "Grace", "Victor",
)
PLACES = ("park", "station", "library", "market", "museum", "harbor", "bakery", "garden", "cinema", "school")
DOMAINS = ("example.com", "mail.org", "post.net", "letters.io", "inbox.co")
POSITIVE_WORDS = ("wonderful", "delicious", "excellent", "lovely", "great", "fantastic", "pleasant", "perfect")
NEGATIVE_WORDS = ("terrible", "awful", "horrible", "disgusting", "bad", "dreadful", "boring", "broken")
REVIEWED = ("food", "movie", "hotel", "service", "concert", "book", "game", "coffee", "trip", "show")
MONTHS = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)
VOWELS = "aeiou"


# ------------------------------------------------------------------ small helpers

def _numbers(rng: random.Random, count: int, low: int = 1, high: int = 99) -> list[int]:
    return [rng.randint(low, high) for _ in range(count)]


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


def _sentence(rng: random.Random) -> str:
    """A short all-lowercase sentence: 'the small rabbit sleeps'."""
    return f"the {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)}"


def _date(rng: random.Random) -> tuple[int, int, int]:
    return rng.randint(1990, 2030), rng.randint(1, 12), rng.randint(1, 28)


# ------------------------------------------------------------------ task types: one pure function each

def make_uppercase_word(rng):
    word = rng.choice(NOUNS)
    return word, word.upper()


def make_uppercase_sentence(rng):
    sentence = _sentence(rng)
    return sentence, sentence.upper()


def make_lowercase_word(rng):
    word = rng.choice(NOUNS)
    return word.upper(), word


def make_capitalize_word(rng):
    word = rng.choice(NOUNS)
    return word, word.capitalize()


def make_title_case(rng):
    words = [rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)]
    return " ".join(words), " ".join(w.capitalize() for w in words)


def make_acronym(rng):
    words = [rng.choice(ADJECTIVES), rng.choice(NOUNS), rng.choice(NOUNS)]
    return " ".join(words), "".join(w[0].upper() for w in words)


def make_reverse_word(rng):
    word = rng.choice(NOUNS)
    return word, word[::-1]


def make_reverse_word_order(rng):
    words = rng.sample(ADJECTIVES, rng.randint(3, 4))
    return " ".join(words), " ".join(reversed(words))


def make_remove_vowels(rng):
    word = rng.choice(NOUNS)
    return word, "".join(c for c in word if c not in VOWELS)


def make_first_letter(rng):
    word = rng.choice(NOUNS)
    return word, word[0]


def make_last_letter(rng):
    word = rng.choice(NOUNS)
    return word, word[-1]


def make_count_letters(rng):
    word = rng.choice(NOUNS)
    return word, str(len(word))


def make_count_words(rng):
    words = [rng.choice(ADJECTIVES + NOUNS) for _ in range(rng.randint(2, 7))]
    return " ".join(words), str(len(words))


def make_second_word(rng):
    sentence = _sentence(rng)
    return sentence, sentence.split()[1]


def make_add_two(rng):
    a, b = _numbers(rng, 2)
    return _join([a, b]), str(a + b)


def make_add_three(rng):
    values = _numbers(rng, 3, 1, 50)
    return _join(values), str(sum(values))


def make_subtract(rng):
    a, b = sorted(_numbers(rng, 2), reverse=True)
    return _join([a, b]), str(a - b)


def make_multiply(rng):
    a, b = _numbers(rng, 2, 2, 12)
    return f"{a} and {b}", str(a * b)


def make_next_number(rng):
    n = rng.randint(1, 998)
    return str(n), str(n + 1)


def make_previous_number(rng):
    n = rng.randint(2, 999)
    return str(n), str(n - 1)


def make_larger_of_two(rng):
    a, b = rng.sample(range(1, 100), 2)
    return _join([a, b]), str(max(a, b))


def make_sort_ascending(rng):
    values = _numbers(rng, rng.randint(3, 6))
    return _join(values), _join(sorted(values))


def make_sort_descending(rng):
    values = _numbers(rng, rng.randint(3, 6))
    return _join(values), _join(sorted(values, reverse=True))


def make_max_of_list(rng):
    values = _numbers(rng, rng.randint(3, 6))
    return _join(values), str(max(values))


def make_min_of_list(rng):
    values = _numbers(rng, rng.randint(3, 6))
    return _join(values), str(min(values))


def make_sum_of_list(rng):
    values = _numbers(rng, rng.randint(3, 5), 1, 20)
    return _join(values), str(sum(values))


def make_list_length(rng):
    words = [rng.choice(NOUNS) for _ in range(rng.randint(2, 8))]
    return _join(words), str(len(words))


def make_reverse_list(rng):
    values = _numbers(rng, rng.randint(3, 6))
    return _join(values), _join(reversed(values))


def make_dedupe_list(rng):
    unique = rng.sample(range(1, 30), rng.randint(3, 5))
    values = unique + [rng.choice(unique) for _ in range(rng.randint(1, 3))]
    rng.shuffle(values)
    return _join(values), _join(dict.fromkeys(values))


def make_date_us_to_iso(rng):
    y, m, d = _date(rng)
    return f"{m:02d}/{d:02d}/{y}", f"{y}-{m:02d}-{d:02d}"


def make_date_iso_to_us(rng):
    y, m, d = _date(rng)
    return f"{y}-{m:02d}-{d:02d}", f"{m:02d}/{d:02d}/{y}"


def make_month_of_date(rng):
    y, m, d = _date(rng)
    return f"{y}-{m:02d}-{d:02d}", MONTHS[m - 1]


def make_year_of_date(rng):
    y, m, d = _date(rng)
    return f"{y}-{m:02d}-{d:02d}", str(y)


def make_extract_email(rng):
    name = rng.choice(NAMES)
    email = f"{name.lower()}.{rng.choice(NOUNS)}@{rng.choice(DOMAINS)}"
    return f"please write to {email} about the {rng.choice(NOUNS)}", email


def make_extract_number(rng):
    n = rng.randint(2, 500)
    return f"the {rng.choice(NOUNS)} in the {rng.choice(PLACES)} costs {n} dollars", str(n)


def make_extract_name(rng):
    name = rng.choice(NAMES)
    return f"yesterday we met {name} near the {rng.choice(PLACES)}", name


def make_even_odd(rng):
    n = rng.randint(1, 999)
    return str(n), "even" if n % 2 == 0 else "odd"


def make_number_sign(rng):
    n = rng.randint(1, 200) * rng.choice((1, -1))
    return str(n), "positive" if n > 0 else "negative"


def make_sentiment(rng):
    positive = rng.random() < 0.5
    word = rng.choice(POSITIVE_WORDS if positive else NEGATIVE_WORDS)
    return f"the {rng.choice(REVIEWED)} was {word}", "positive" if positive else "negative"


def make_vowel_start(rng):
    if rng.random() < 0.5:
        return rng.choice(VOWEL_WORDS), "vowel"
    return rng.choice(CONSONANT_WORDS), "consonant"


# ------------------------------------------------------------------ the registry

ALPACA, NI_TRAIN, NI_TEST, UNNATURAL = "alpaca", "ni-train", "ni-test", "unnatural"


@dataclass(frozen=True)
class DemoTask:
    name: str
    make: Callable[[random.Random], tuple[str, str]]
    where: str                         # ALPACA | NI_TRAIN | NI_TEST | UNNATURAL
    definition: str                    # natural-instructions Definition; alpaca / unnatural: the first phrasing
    phrasings: tuple[str, ...] = ()    # more ways to say the instruction (alpaca, unnatural)
    inline: str = ""                   # alpaca: instruction with the input folded in, "{input}" (then input is "")
    category: str = "Program Execution"
    domain: str = "Miscellaneous"
    constraints: str = "None."         # unnatural: output space constraints
    sibling_of: str = ""               # for held-out test tasks: the trained type it transfers from
    explanation: str = "Applying the instruction to '{input}' gives '{output}'."
    instructions: tuple[str, ...] = field(init=False, default=())

    def __post_init__(self):
        object.__setattr__(self, "instructions", (self.definition, *self.phrasings))


TASKS: tuple[DemoTask, ...] = (
    # ---- natural-instructions, trained
    DemoTask("uppercase_word", make_uppercase_word, NI_TRAIN,
             "In this task, you are given a word. Write the word in uppercase letters.",
             explanation="'{output}' is '{input}' written in uppercase letters."),
    DemoTask("reverse_word", make_reverse_word, NI_TRAIN,
             "In this task, you are given a word. Write its letters in reverse order.",
             explanation="Reading '{input}' from the last letter to the first gives '{output}'."),
    DemoTask("first_letter", make_first_letter, NI_TRAIN,
             "In this task, you are given a word. Return the first letter of the word.",
             explanation="The word '{input}' starts with '{output}'."),
    DemoTask("count_words", make_count_words, NI_TRAIN,
             "In this task, you are given a sequence of words. Count the words and return the count as a number.",
             explanation="'{input}' has {output} words."),
    DemoTask("add_two_numbers", make_add_two, NI_TRAIN,
             "In this task, you are given two numbers separated by a comma. Return their sum.",
             category="Mathematics", domain="Mathematics",
             explanation="The sum of {input} is {output}."),
    DemoTask("subtract_numbers", make_subtract, NI_TRAIN,
             "In this task, you are given two numbers separated by a comma. Subtract the second number from the "
             "first and return the result.",
             category="Mathematics", domain="Mathematics",
             explanation="The first number minus the second in '{input}' is {output}."),
    DemoTask("next_number", make_next_number, NI_TRAIN,
             "In this task, you are given a number. Return the number that comes right after it (add one).",
             category="Mathematics", domain="Mathematics",
             explanation="One more than {input} is {output}."),
    DemoTask("sort_numbers_ascending", make_sort_ascending, NI_TRAIN,
             "In this task, you are given a list of numbers separated by commas. Sort them from smallest to "
             "largest and return them separated by commas.",
             explanation="From smallest to largest, {input} is {output}."),
    DemoTask("max_of_list", make_max_of_list, NI_TRAIN,
             "In this task, you are given a list of numbers separated by commas. Return the largest number.",
             explanation="The largest number in {input} is {output}."),
    DemoTask("date_us_to_iso", make_date_us_to_iso, NI_TRAIN,
             "In this task, you are given a date in the format MM/DD/YYYY. Rewrite it in the format YYYY-MM-DD.",
             explanation="{input} written as YYYY-MM-DD is {output}."),
    DemoTask("month_of_date", make_month_of_date, NI_TRAIN,
             "In this task, you are given a date in the format YYYY-MM-DD. Return the name of its month in "
             "English.",
             explanation="The month of {input} is {output}."),
    DemoTask("extract_email", make_extract_email, NI_TRAIN,
             "In this task, you are given a sentence that contains one email address. Return the email address.",
             category="Information Extraction",
             explanation="The only email address in the sentence is {output}."),
    DemoTask("extract_name", make_extract_name, NI_TRAIN,
             "In this task, you are given a sentence in lowercase that contains one capitalized name. Return the "
             "capitalized name.",
             category="Named Entity Recognition",
             explanation="{output} is the only capitalized word in the sentence."),
    DemoTask("even_or_odd", make_even_odd, NI_TRAIN,
             "In this task, you are given a number. Answer 'even' if it is divisible by two, otherwise answer "
             "'odd'.",
             category="Mathematics", domain="Mathematics",
             explanation="{input} is {output}."),
    DemoTask("review_sentiment", make_sentiment, NI_TRAIN,
             "In this task, you are given a short review. Answer 'positive' if the review is favourable and "
             "'negative' if it is not.",
             category="Sentiment Analysis", domain="Reviews",
             explanation="The review '{input}' is {output}."),
    DemoTask("title_case", make_title_case, NI_TRAIN,
             "In this task, you are given a phrase in lowercase. Capitalize the first letter of every word.",
             explanation="Capitalizing every word of '{input}' gives '{output}'."),
    # ---- natural-instructions, held out as test tasks (each the sibling of a trained type)
    DemoTask("uppercase_sentence", make_uppercase_sentence, NI_TEST,
             "In this task, you are given a sentence. Write the whole sentence in uppercase letters.",
             sibling_of="uppercase_word", explanation="'{output}' is '{input}' written in uppercase letters."),
    DemoTask("add_three_numbers", make_add_three, NI_TEST,
             "In this task, you are given three numbers separated by commas. Return their sum.",
             category="Mathematics", domain="Mathematics", sibling_of="add_two_numbers",
             explanation="The sum of {input} is {output}."),
    DemoTask("last_letter", make_last_letter, NI_TEST,
             "In this task, you are given a word. Return the last letter of the word.",
             sibling_of="first_letter", explanation="The word '{input}' ends with '{output}'."),
    DemoTask("previous_number", make_previous_number, NI_TEST,
             "In this task, you are given a number. Return the number that comes right before it (subtract one).",
             category="Mathematics", domain="Mathematics", sibling_of="next_number",
             explanation="One less than {input} is {output}."),
    DemoTask("sort_numbers_descending", make_sort_descending, NI_TEST,
             "In this task, you are given a list of numbers separated by commas. Sort them from largest to "
             "smallest and return them separated by commas.",
             sibling_of="sort_numbers_ascending", explanation="From largest to smallest, {input} is {output}."),
    DemoTask("min_of_list", make_min_of_list, NI_TEST,
             "In this task, you are given a list of numbers separated by commas. Return the smallest number.",
             sibling_of="max_of_list", explanation="The smallest number in {input} is {output}."),
    DemoTask("year_of_date", make_year_of_date, NI_TEST,
             "In this task, you are given a date in the format YYYY-MM-DD. Return its year.",
             sibling_of="month_of_date", explanation="The year of {input} is {output}."),
    DemoTask("reverse_word_order", make_reverse_word_order, NI_TEST,
             "In this task, you are given a sequence of words. Write the words in reverse order.",
             sibling_of="reverse_list", explanation="'{input}' in reverse word order is '{output}'."),
    DemoTask("acronym", make_acronym, NI_TEST,
             "In this task, you are given a phrase. Return its acronym: the first letter of every word, in "
             "uppercase, with no spaces.",
             sibling_of="first_letter", explanation="The first letters of '{input}' in uppercase are {output}."),
    # ---- alpaca
    DemoTask("lowercase_word", make_lowercase_word, ALPACA, "Write the given word in lowercase letters.",
             phrasings=("Convert this word to lowercase.",), inline="Write the word {input} in lowercase letters."),
    DemoTask("count_letters", make_count_letters, ALPACA, "Count the letters in the given word.",
             phrasings=("How many letters does this word have?",), inline="How many letters are in the word "
             "'{input}'?"),
    DemoTask("second_word", make_second_word, ALPACA, "Return the second word of the sentence.",
             phrasings=("What is the second word of this sentence?",)),
    DemoTask("multiply_numbers", make_multiply, ALPACA, "Multiply the two numbers.",
             phrasings=("Compute the product of these numbers.",), inline="Multiply {input}.",
             category="Mathematics", domain="Mathematics"),
    DemoTask("dedupe_list", make_dedupe_list, ALPACA,
             "Remove the repeated numbers from the list, keeping the first occurrence of each, and keep the order.",
             phrasings=("Delete duplicates from this list of numbers while keeping their order.",)),
    DemoTask("date_iso_to_us", make_date_iso_to_us, ALPACA, "Rewrite the date in the format MM/DD/YYYY.",
             phrasings=("Convert this YYYY-MM-DD date to MM/DD/YYYY.",),
             inline="Write the date {input} in the format MM/DD/YYYY."),
    DemoTask("vowel_or_consonant", make_vowel_start, ALPACA,
             "Does the word start with a vowel or a consonant? Answer 'vowel' or 'consonant'.",
             phrasings=("Tell whether the first letter of the word is a vowel or a consonant.",),
             inline="Does the word '{input}' start with a vowel or a consonant? Answer 'vowel' or 'consonant'."),
    DemoTask("capitalize_word", make_capitalize_word, ALPACA, "Capitalize the first letter of the word.",
             phrasings=("Write this word with an uppercase first letter.",)),
    # ---- unnatural-instructions (core)
    DemoTask("remove_vowels", make_remove_vowels, UNNATURAL,
             "You are given a word. Remove every vowel (a, e, i, o, u) from it and output what is left.",
             phrasings=("Delete all the vowels from the word below.",),
             constraints="The output should contain only the consonants of the word, in order."),
    DemoTask("larger_of_two", make_larger_of_two, UNNATURAL,
             "You are given two different numbers. Output the larger of the two.",
             phrasings=("Which of these two numbers is bigger? Output it.",),
             constraints="The output should be one of the two numbers."),
    DemoTask("sum_of_list", make_sum_of_list, UNNATURAL,
             "You are given a list of numbers. Output the sum of all the numbers.",
             phrasings=("Add up all the numbers in the list.",),
             constraints="The output should be a single number."),
    DemoTask("list_length", make_list_length, UNNATURAL,
             "You are given a list of words separated by commas. Output how many words the list contains.",
             phrasings=("Count the items in the following list.",),
             constraints="The output should be a single number."),
    DemoTask("reverse_list", make_reverse_list, UNNATURAL,
             "You are given a list of numbers. Output the same numbers in reverse order, separated by commas.",
             phrasings=("Reverse the order of the numbers in this list.",)),
    DemoTask("extract_number", make_extract_number, UNNATURAL,
             "You are given a sentence that mentions one number. Output that number.",
             phrasings=("Find the number in the sentence below.",),
             constraints="The output should be a single number."),
    DemoTask("number_sign", make_number_sign, UNNATURAL,
             "You are given a number. Output 'positive' if it is greater than zero and 'negative' if it is below "
             "zero.",
             phrasings=("Is the following number positive or negative?",),
             constraints="The output should be one of the two: 'positive' or 'negative'."),
)

TASK_BY_NAME = {t.name: t for t in TASKS}
NI_TASK_NUMBER_BASE = 9001   # above every real task number, so demo task files never collide with real ones


def ni_task_name(task: DemoTask) -> str:
    """The natural-instructions file stem, `task9001_demo_uppercase_word`."""
    ni_tasks = [t for t in TASKS if t.where in (NI_TRAIN, NI_TEST)]
    return f"task{NI_TASK_NUMBER_BASE + ni_tasks.index(task)}_demo_{task.name}"


def task_rng(seed: int, *parts: object) -> random.Random:
    """One generator per (seed, task, purpose): adding a task never changes the data of another.
    Seeding with a string is deterministic across processes (it is hashed with SHA-512, not hash())."""
    return random.Random(":".join(str(p) for p in (seed, *parts)))


def generate(task: DemoTask, rng: random.Random, count: int) -> list[tuple[str, str]]:
    """`count` items with distinct inputs where the task's input space allows it (so dedup keeps them all and no
    test item repeats a training item); past that, repeats are allowed rather than failing."""
    items, seen = [], set()
    attempts = 0
    while len(items) < count:
        item = task.make(rng)
        attempts += 1
        if item[0] not in seen or attempts > 50 * count:
            seen.add(item[0])
            items.append(item)
    return items


# ------------------------------------------------------------------ writers, one per format

def alpaca_records(seed: int, instances: int) -> list[dict]:
    records = []
    for task in (t for t in TASKS if t.where == ALPACA):
        rng = task_rng(seed, "alpaca", task.name)
        for inp, out in generate(task, rng, instances):
            if task.inline and rng.random() < 0.5:
                records.append({"instruction": task.inline.format(input=inp), "input": "", "output": out})
            else:
                records.append({"instruction": rng.choice(task.instructions), "input": inp, "output": out})
    task_rng(seed, "alpaca", "order").shuffle(records)
    return records


ALPACA_FILE = "alpaca/alpaca_data.json"
UNNATURAL_FILE = "unnatural_instructions/core_data.jsonl"


def write_alpaca(out: Path, seed: int, instances: int) -> Path:
    path = out / ALPACA_FILE
    with atomic_write(path) as f:
        f.write(json.dumps(alpaca_records(seed, instances), indent=4))   # upstream: ASCII escapes, no final newline
    return path


def ni_task_file(task: DemoTask, seed: int, instances: int) -> dict:
    rng = task_rng(seed, "ni", task.name)
    positives_and_instances = generate(task, rng, 2 + instances)
    positives, items = positives_and_instances[:2], positives_and_instances[2:]
    negative_input, correct = task.make(rng)
    wrong = task.make(rng)[1]
    while wrong == correct:
        wrong = task.make(rng)[1]
    number = ni_task_name(task).split("_")[0]
    return {
        "Contributors": ["llmft demo generator"],
        "Source": ["llmft_demo"],
        "URL": [],
        "Categories": [task.category],
        "Reasoning": [],
        "Definition": [task.definition],
        "Input_language": ["English"],
        "Output_language": ["English"],
        "Instruction_language": ["English"],
        "Domains": [task.domain],
        "Positive Examples": [
            {"input": i, "output": o, "explanation": task.explanation.format(input=i, output=o)} for i, o in positives
        ],
        "Negative Examples": [{
            "input": negative_input, "output": wrong,
            "explanation": f"'{wrong}' is wrong: the correct answer for this input is '{correct}'.",
        }],
        "Instances": [
            {"id": f"{number}-{rng.getrandbits(128):032x}", "input": i, "output": [o]} for i, o in items
        ],
        "Instance License": ["Apache 2.0"],
    }


def write_natural_instructions(out: Path, seed: int, instances: int) -> list[Path]:
    root = out / "natural_instructions"
    paths, split = [], {NI_TRAIN: [], NI_TEST: []}
    for task in (t for t in TASKS if t.where in split):
        name = ni_task_name(task)
        path = root / "tasks" / f"{name}.json"
        with atomic_write(path) as f:
            f.write(json.dumps(ni_task_file(task, seed, instances), indent=4, ensure_ascii=False))
        paths.append(path)
        split[task.where].append(name)
    for where, file in ((NI_TRAIN, "train_tasks.txt"), (NI_TEST, "test_tasks.txt")):
        with atomic_write(root / "splits" / "default" / file) as f:
            f.write("".join(f"{name}\n" for name in split[where]))
    return paths


def unnatural_records(seed: int, instances: int) -> list[dict]:
    """Core-format lines: one instruction phrasing with one to three instances each (core has no reformulations)."""
    rows = []
    for task in (t for t in TASKS if t.where == UNNATURAL):
        rng = task_rng(seed, "unnatural", task.name)
        pending = generate(task, rng, instances)
        while pending:
            size = rng.randint(1, 3)
            group, pending = pending[:size], pending[size:]
            instruction = rng.choice(task.instructions)
            rows.append({"instruction": instruction, "instances": [
                {"instruction_with_input": f"{instruction}\n{i}", "input": i, "constraints": task.constraints,
                 "output": o} for i, o in group
            ]})
    task_rng(seed, "unnatural", "order").shuffle(rows)
    return rows


def write_unnatural(out: Path, seed: int, instances: int) -> Path:
    path = out / UNNATURAL_FILE
    with atomic_write(path) as f:
        for row in unnatural_records(seed, instances):
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def write_demo(out: str | Path, seed: int = 0, instances: int = 60) -> dict:
    """Write the three instruction datasets and the multi-turn chat source (demo_chat) under `out`; returns a
    summary (paths and counts)."""
    from llmft.data.demo_chat import CHAT_FILE, CHAT_TASKS, write_chat
    from llmft.folders import new_folder

    out = Path(out)
    with new_folder(out, "data demo") as tmp:
        ni_paths = write_natural_instructions(tmp, seed, instances)
        write_alpaca(tmp, seed, instances)
        write_unnatural(tmp, seed, instances)
        write_chat(tmp, seed, instances)
    counts = {
        "alpaca": sum(1 for t in TASKS if t.where == ALPACA) * instances,
        "natural-instructions (train tasks)": sum(1 for t in TASKS if t.where == NI_TRAIN) * instances,
        "natural-instructions (test tasks)": sum(1 for t in TASKS if t.where == NI_TEST) * instances,
        "unnatural-instructions": sum(1 for t in TASKS if t.where == UNNATURAL) * instances,
        "chat": len(CHAT_TASKS) * instances,
    }
    return {
        "alpaca": str(out / ALPACA_FILE),
        "natural_instructions": str(out / "natural_instructions"),
        "natural_instructions_tasks": len(ni_paths),
        "unnatural_instructions": str(out / UNNATURAL_FILE),
        "chat": str(out / CHAT_FILE),
        "task_types": len(TASKS),
        "chat_types": len(CHAT_TASKS),
        "instances": counts,
    }
