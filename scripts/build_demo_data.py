"""Build the bundled demo dataset under data/raw/demo/ (deterministic, seeded).

Real rows come from the public sample data (Apache-2.0 / ODC-BY sources only; see ATTRIBUTION.md); the rest
is generated from templates with computed answers, in English and Chinese. The data is dirty on purpose,
so every stage of the pipeline has something to do: exact and near duplicates, HTML, URLs, e-mails, empty
outputs, a few malformed rows, CRLF line endings in one file and a UTF-8 BOM in another.

    python scripts/build_demo_data.py [--shared ../shared/data] [--out data/raw/demo] [--seed 42]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[1]
NAME, AUTHOR = "Tuneline Assistant", "the tuneline team"


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def json_array(rows: list[dict[str, Any]]) -> str:
    """One element per line: readable diffs, still a JSON array."""
    return "[\n" + ",\n".join(dumps(r) for r in rows) + "\n]\n"


def load_shared(shared: Path) -> dict[str, Any]:
    def jsonl(name: str) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (shared / name).read_text(encoding="utf-8").splitlines() if line]

    return {
        "identity": json.loads((shared / "identity.json").read_text(encoding="utf-8")),
        "glaive": json.loads((shared / "glaive_toolcall_en_demo.json").read_text(encoding="utf-8")),
        "seed": jsonl("alpaca_seed_tasks.jsonl"),
        "c4": jsonl("c4_demo.jsonl"),
    }


def dirty(text: str, rng: random.Random, kind: str) -> str:
    """Add one kind of real-world noise that `clean` must remove."""
    if kind == "html":
        return f"<p>{text.replace(' and ', ' &amp; ', 1)}</p><br/>"
    if kind == "url":
        return f"{text} More at https://example.com/docs/{rng.randint(1, 999)}?ref=demo"
    if kind == "email":
        return f"{text} Questions: support{rng.randint(1, 99)}@example.org"
    return text


def near_dup(text: str, rng: random.Random) -> str:
    """A small edit (a typo-like change of one character, or a trailing remark) of a long text."""
    if rng.random() < 0.5:
        i = rng.randrange(len(text) // 3, len(text) - 1)
        while not text[i].isalpha():
            i += 1
        return text[:i] + ("e" if text[i] != "e" else "a") + text[i + 1 :]
    return text.rstrip() + " Hope this helps."


def build_alpaca_mixed(data: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """identity.json (placeholders filled) + English capital-city QA; alpaca JSON with a BOM."""
    rows = []
    for r in data["identity"]:
        out = r["output"].replace("{{name}}", NAME).replace("{{author}}", AUTHOR)
        rows.append(
            {"instruction": r["instruction"], "input": r["input"], "output": out, "category": "identity"}
        )
    rows += capital_rows("en")
    rows += [dict(rows[i]) for i in (0, 5, 100)]  # exact duplicates
    rows.append({"instruction": "Who made you?", "input": "", "output": "", "category": "identity"})  # empty
    return rows


def build_seed_tasks(data: dict[str, Any], rng: random.Random) -> list[str]:
    """Stanford Alpaca seed tasks as alpaca JSONL lines, with noise and three malformed lines."""
    lines = []
    for i, task in enumerate(data["seed"]):
        inst = task["instances"][0]
        row = {
            "instruction": task["instruction"],
            "input": inst["input"],
            "output": inst["output"],
            "category": "classification" if task["is_classification"] else "generation",
            "name": task["name"],
        }
        if i % 20 == 3:
            row["output"] = dirty(row["output"], rng, "html")
        elif i % 20 == 7:
            row["input"] = dirty(row["input"], rng, "url")
        elif i % 20 == 11:
            row["output"] = dirty(row["output"], rng, "email")
        elif i % 40 == 15:
            row["output"] = ""
        if i % 25 == 24:  # some rows carry no category at all
            del row["category"]
        lines.append(dumps(row))
    lines.insert(
        30, '{"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yel'
    )
    lines.insert(90, '{"instruction": "What is 0 divided by 0?", "input": "", "output": NaN}')
    lines.insert(120, dumps({"instruction": "Summarize the paragraph.", "input": "Paragraph missing."}))
    lines.insert(60, lines[10])  # exact duplicate
    return lines


def build_glaive(data: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Glaive tool-call conversations (sharegpt JSON), plus near duplicates and two malformed rows."""
    rows = [dict(r, category="tool_use") for r in data["glaive"]]
    for r in rng.sample(rows[:250], 12):
        copy = json.loads(json.dumps(r))
        last = copy["conversations"][-1]
        last["value"] = near_dup(last["value"], rng) if len(last["value"]) > 200 else last["value"]
        rows.append(copy)
    rows.append(json.loads(json.dumps(rows[7])))  # exact duplicate
    bad_role = json.loads(json.dumps(rows[3]))
    bad_role["conversations"][0]["from"] = "customer"
    no_answer = json.loads(json.dumps(rows[4]))
    no_answer["conversations"] = no_answer["conversations"][:1]
    rows += [bad_role, no_answer]
    return rows


def c4_continuation_texts(data: dict[str, Any]) -> list[str]:
    return [r["text"] for r in data["c4"] if 400 <= len(r["text"]) <= 1500][:70]


def pretrain_corpus(data: dict[str, Any]) -> list[dict[str, str]]:
    """The demo base's pre-training corpus (`build_base.corpus`): the C4 pages the demo data does not use,
    so the base learns English web text and none of the fine-tuning rows (nor the test split's)."""
    used = set(c4_continuation_texts(data))
    return [{"text": r["text"]} for r in data["c4"] if r["text"] not in used]


def build_c4(data: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    """Web-text continuation (alpaca JSONL from C4): real pages with their URLs and boilerplate."""
    rows = []
    for text in c4_continuation_texts(data):
        cut = text.find(". ", len(text) // 2)
        cut = cut + 1 if cut > 0 else len(text) // 2
        rows.append(
            {
                "instruction": "Continue the following text.",
                "input": text[:cut].strip(),
                "output": text[cut:].strip(),
                "category": "continuation",
                "lang": "en",
            }
        )
    for r in rng.sample(rows, 8):
        rows.append(dict(r, output=near_dup(r["output"], rng)))
    return rows


def build_messages(rng: random.Random) -> list[str]:
    """Math (EN + ZH) and OpenAI tool-call conversations as messages JSONL; one blank line, one bad role."""
    rows = math_rows(rng) + tool_call_rows(rng)
    rng.shuffle(rows)
    rows += rows[:6]  # exact duplicates
    lines = [dumps(r) for r in rows]
    lines.insert(100, "")
    lines.insert(
        200,
        dumps(
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "moderator", "content": "approved"},
                    {"role": "assistant", "content": "4"},
                ],
                "category": "math",
            }
        ),
    )
    return lines


def build_translation_csv(rng: random.Random) -> str:
    rows = translation_rows(rng)
    rows += rows[:4]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["instruction", "input", "output", "category"])
    for r in rows:
        writer.writerow([r["instruction"], r["input"], r["output"], r["category"]])
    buf.write('"Translate into Chinese.","Good morning."\n')  # ragged row: output cell missing
    return buf.getvalue()


def build_zh_qa_csv() -> str:
    """Chinese headers (问题, 回答, 类别), UTF-8 with BOM and CRLF, as spreadsheet programs save it."""
    rows = capital_rows("zh")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    writer.writerow(["问题", "回答", "类别"])
    for r in rows + rows[:3]:
        writer.writerow([r["instruction"], r["output"], r["category"]])
    return "\ufeff" + buf.getvalue()


def write_parquet(path: Path, rng: random.Random) -> int:
    rows = unit_rows(rng)
    rows += rows[:3]
    table = pa.table({k: [r[k] for r in rows] for k in ("prompt", "response", "category", "lang")})
    pq.write_table(table, path, compression="zstd")
    return len(rows)


def check_near_dups(out: Path) -> None:
    """Count pairs the dedup rule (TF-IDF char 3-gram cosine >= 0.95) would see: a sanity check."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = []
    for name in ("glaive_toolcall.json", "c4_continuation.jsonl"):
        raw = (out / name).read_text(encoding="utf-8")
        rows = json.loads(raw) if name.endswith(".json") else [json.loads(x) for x in raw.splitlines()]
        for r in rows:
            turns = r.get("conversations")
            texts.append(
                "\n".join(t["value"] for t in turns)
                if turns
                else "\n".join((r["instruction"], r["input"], r["output"]))
            )
    vec = TfidfVectorizer(analyzer="char", ngram_range=(3, 3)).fit_transform(texts)
    sims = (vec @ vec.T).tocoo()
    pairs = sum(1 for i, j, v in zip(sims.row, sims.col, sims.data, strict=True) if i < j and v >= 0.95)
    print(f"near-duplicate pairs (cosine >= 0.95, incl. exact) in glaive + c4: {pairs}")


# --------------------------------------------------------------------------------------------------------
# Generated rows: templates whose answers are computed (or are stable facts), in English and Chinese.

CAPITALS = [
    ("France", "法国", "Paris", "巴黎"),
    ("Japan", "日本", "Tokyo", "东京"),
    ("China", "中国", "Beijing", "北京"),
    ("the United Kingdom", "英国", "London", "伦敦"),
    ("Germany", "德国", "Berlin", "柏林"),
    ("Italy", "意大利", "Rome", "罗马"),
    ("Spain", "西班牙", "Madrid", "马德里"),
    ("Canada", "加拿大", "Ottawa", "渥太华"),
    ("Australia", "澳大利亚", "Canberra", "堪培拉"),
    ("Egypt", "埃及", "Cairo", "开罗"),
    ("Russia", "俄罗斯", "Moscow", "莫斯科"),
    ("Brazil", "巴西", "Brasília", "巴西利亚"),
    ("India", "印度", "New Delhi", "新德里"),
    ("South Korea", "韩国", "Seoul", "首尔"),
    ("Thailand", "泰国", "Bangkok", "曼谷"),
    ("Kenya", "肯尼亚", "Nairobi", "内罗毕"),
    ("Argentina", "阿根廷", "Buenos Aires", "布宜诺斯艾利斯"),
    ("Mexico", "墨西哥", "Mexico City", "墨西哥城"),
    ("Norway", "挪威", "Oslo", "奥斯陆"),
    ("Sweden", "瑞典", "Stockholm", "斯德哥尔摩"),
    ("Portugal", "葡萄牙", "Lisbon", "里斯本"),
    ("Greece", "希腊", "Athens", "雅典"),
    ("Turkey", "土耳其", "Ankara", "安卡拉"),
    ("Vietnam", "越南", "Hanoi", "河内"),
    ("Indonesia", "印度尼西亚", "Jakarta", "雅加达"),
    ("Poland", "波兰", "Warsaw", "华沙"),
    ("Austria", "奥地利", "Vienna", "维也纳"),
    ("Ireland", "爱尔兰", "Dublin", "都柏林"),
    ("Finland", "芬兰", "Helsinki", "赫尔辛基"),
    ("Denmark", "丹麦", "Copenhagen", "哥本哈根"),
    ("New Zealand", "新西兰", "Wellington", "惠灵顿"),
    ("Peru", "秘鲁", "Lima", "利马"),
    ("Chile", "智利", "Santiago", "圣地亚哥"),
    ("Cuba", "古巴", "Havana", "哈瓦那"),
]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]


def capital_rows(lang: str) -> list[dict[str, Any]]:
    rows = []
    for c_en, c_zh, cap_en, cap_zh in CAPITALS:
        if lang == "en":
            rows.append(
                {
                    "instruction": f"What is the capital of {c_en}?",
                    "input": "",
                    "output": f"The capital of {c_en} is {cap_en}.",
                    "category": "qa",
                }
            )
            rows.append(
                {
                    "instruction": f"{cap_en} is the capital of which country?",
                    "input": "",
                    "output": f"{cap_en} is the capital of {c_en}.",
                    "category": "qa",
                }
            )
        else:
            for q in (f"{c_zh}的首都是哪里？", f"请问{c_zh}的首都是什么城市？"):
                rows.append({"instruction": q, "output": f"{c_zh}的首都是{cap_zh}。", "category": "zh_qa"})
            rows.append(
                {
                    "instruction": f"{cap_zh}是哪个国家的首都？",
                    "output": f"{cap_zh}是{c_zh}的首都。",
                    "category": "zh_qa",
                }
            )
    if lang == "zh":
        for m, d in enumerate(MONTH_DAYS, start=1):
            rows.append(
                {
                    "instruction": f"平年的{m}月有多少天？",
                    "output": f"平年的{m}月有{d}天。",
                    "category": "zh_qa",
                }
            )
    return rows


# kind -> (English question, answer, Chinese question, answer); the names are filled in by `_math_pair`. The
# order is the order `rng.choice` draws from.
MATH_TEMPLATES = {
    "add": ("What is {a} + {b}?", "{a} + {b} = {sum}.", "{a}加{b}等于多少？", "{a}加{b}等于{sum}。"),
    "sub": ("What is {a} minus {b}?", "{a} - {b} = {diff}.", "{a}减去{b}是多少？", "{a}减去{b}等于{diff}。"),
    "mul": ("Calculate {a} times {b}.", "{a} × {b} = {prod}.", "计算{a}乘以{b}。", "{a}乘以{b}等于{prod}。"),
    "div": (
        "What is {prod} divided by {b}?", "{prod} ÷ {b} = {a}.",
        "{prod}除以{b}等于多少？", "{prod}除以{b}等于{a}。",
    ),
    "pct": ("What is {p}% of {n}?", "{p}% of {n} is {part}.", "{n}的{p}%是多少？", "{n}的{p}%是{part}。"),
    "apples": (
        "A box holds {b} apples. How many apples are in {a} boxes?",
        "{a} boxes hold {a} × {b} = {prod} apples.",
        "一个盒子装{b}个苹果，{a}个盒子一共装多少个苹果？", "{a}个盒子一共装{a}×{b}={prod}个苹果。",
    ),
    "avg": (
        "What is the average of {x}, {y} and {z}?", "({x} + {y} + {z}) / 3 = {mean}.",
        "{x}、{y}和{z}的平均数是多少？", "({x}+{y}+{z})÷3={mean}。",
    ),
}


def _math_pair(rng: random.Random, lang: str) -> tuple[str, str]:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    kind = rng.choice(list(MATH_TEMPLATES))
    values = {"a": a, "b": b, "sum": a + b, "diff": a - b, "prod": a * b}
    # Only the kinds that need more numbers draw them: the seeded stream stays what the files were built from.
    if kind == "pct":
        p, n = rng.choice([10, 20, 25, 50, 75]), rng.randint(1, 40) * 20
        values |= {"p": p, "n": n, "part": n * p // 100}
    elif kind == "avg":
        x, y, z = rng.randint(1, 99) * 3, rng.randint(1, 99) * 3, rng.randint(1, 99) * 3
        values |= {"x": x, "y": y, "z": z, "mean": (x + y + z) // 3}
    q_en, a_en, q_zh, a_zh = MATH_TEMPLATES[kind]
    question, answer = (q_en, a_en) if lang == "en" else (q_zh, a_zh)
    return question.format(**values), answer.format(**values)


def math_rows(rng: random.Random, n: int = 420) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        lang = "en" if i % 2 else "zh"
        q, a = _math_pair(rng, lang)
        msgs: list[dict[str, Any]] = []
        if i % 7 == 0:
            msgs.append(
                {
                    "role": "system",
                    "content": "You are a careful math tutor."
                    if lang == "en"
                    else "你是一位细心的数学老师。",
                }
            )
        if i % 13 == 0:  # multi-turn
            q0, a0 = _math_pair(rng, lang)
            msgs += [{"role": "user", "content": q0}, {"role": "assistant", "content": a0}]
        content: Any = [{"type": "text", "text": q}] if i % 11 == 0 else q  # OpenAI content parts
        msgs += [{"role": "user", "content": content}, {"role": "assistant", "content": a}]
        rows.append({"messages": msgs, "category": "math", "lang": lang})
    return rows


CONVERT_TOOL = [
    {
        "type": "function",
        "function": {
            "name": "convert_units",
            "description": "Convert a value between length units",
            "parameters": {
                "type": "object",
                "properties": {
                    "value": {"type": "number"},
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                },
                "required": ["value", "from", "to"],
            },
        },
    }
]


def tool_call_rows(rng: random.Random, n: int = 24) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        x = rng.randint(2, 500)
        miles = round(x * 0.621371, 2)
        call = {
            "id": f"call_{i}",
            "type": "function",
            "function": {"name": "convert_units", "arguments": dumps({"value": x, "from": "km", "to": "mi"})},
        }
        q, a = (
            (f"Convert {x} km to miles.", f"{x} km is about {miles} miles.")
            if i % 2
            else (f"把{x}公里换算成英里。", f"{x}公里约等于{miles}英里。")
        )
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": None, "tool_calls": [call]},
                    {"role": "tool", "tool_call_id": f"call_{i}", "content": dumps({"result": miles})},
                    {"role": "assistant", "content": a},
                ],
                "tools": CONVERT_TOOL,
                "category": "tool_use",
                "lang": "en" if i % 2 else "zh",
            }
        )
    return rows


NOUNS = [
    ("cats", "只", "猫"),
    ("books", "本", "书"),
    ("apples", "个", "苹果"),
    ("pens", "支", "笔"),
    ("friends", "个", "朋友"),
    ("cars", "辆", "车"),
    ("chairs", "把", "椅子"),
    ("tickets", "张", "票"),
]
PLACES = [("table", "桌子"), ("chair", "椅子"), ("bed", "床"), ("shelf", "书架"), ("floor", "地板")]
WEEKDAYS = [
    ("Monday", "星期一"),
    ("Tuesday", "星期二"),
    ("Wednesday", "星期三"),
    ("Thursday", "星期四"),
    ("Friday", "星期五"),
    ("Saturday", "星期六"),
    ("Sunday", "星期日"),
]
COLORS = [
    ("red", "红色"),
    ("blue", "蓝色"),
    ("green", "绿色"),
    ("yellow", "黄色"),
    ("black", "黑色"),
    ("white", "白色"),
    ("purple", "紫色"),
    ("orange", "橙色"),
]


def translation_rows(rng: random.Random, n: int = 260) -> list[dict[str, Any]]:
    pairs = [(f"I have {k} {en}.", f"我有{k}{m}{zh}。") for en, m, zh in NOUNS for k in range(2, 13)]
    pairs += [(f"The book is on the {en}.", f"书在{zh}上。") for en, zh in PLACES]
    pairs += [(f"Today is {en}.", f"今天是{zh}。") for en, zh in WEEKDAYS]
    pairs += [(f"See you on {en}!", f"{zh}见！") for en, zh in WEEKDAYS]
    pairs += [(f"My favorite color is {en}.", f"我最喜欢的颜色是{zh}。") for en, zh in COLORS]
    rows = []
    for en, zh in pairs:
        rows.append(
            {
                "instruction": "Translate the following sentence into Chinese.",
                "input": en,
                "output": zh,
                "category": "translation",
            }
        )
        rows.append(
            {"instruction": "把下面的句子翻译成英文。", "input": zh, "output": en, "category": "translation"}
        )
    rng.shuffle(rows)
    return rows[:n]


UNITS = [
    ("kilometers", "meters", "千米", "米", 1000),
    ("meters", "centimeters", "米", "厘米", 100),
    ("kilograms", "grams", "千克", "克", 1000),
    ("hours", "minutes", "小时", "分钟", 60),
    ("minutes", "seconds", "分钟", "秒", 60),
    ("liters", "milliliters", "升", "毫升", 1000),
    ("feet", "inches", "英尺", "英寸", 12),
    ("yards", "feet", "码", "英尺", 3),
    ("days", "hours", "天", "小时", 24),
    ("weeks", "days", "周", "天", 7),
    ("tonnes", "kilograms", "吨", "千克", 1000),
    ("centimeters", "millimeters", "厘米", "毫米", 10),
]


def unit_questions(rng: random.Random, n: int, top: int) -> list[tuple[tuple[Any, ...], int, str, str]]:
    """n distinct "how many X in x Y" questions (EN or ZH): (unit row, x, lang, question)."""
    seen: set[str] = set()
    out = []
    while len(out) < n:
        unit = rng.choice(UNITS)
        f_en, t_en, f_zh, t_zh, _ = unit
        x = rng.randint(2, top)
        lang = rng.choice(["en", "zh"])
        question = f"How many {t_en} are in {x} {f_en}?" if lang == "en" else f"{x}{f_zh}等于多少{t_zh}？"
        if question not in seen:
            seen.add(question)
            out.append((unit, x, lang, question))
    return out


def unit_rows(rng: random.Random, n: int = 300) -> list[dict[str, Any]]:
    rows = []
    for (f_en, t_en, f_zh, t_zh, k), x, lang, prompt in unit_questions(rng, n, 99):
        resp = f"{x} {f_en} = {x * k} {t_en}." if lang == "en" else f"{x}{f_zh}等于{x * k}{t_zh}。"
        rows.append({"prompt": prompt, "response": resp, "category": "unit_conversion", "lang": lang})
    return rows


# Structured output: the unit-conversion request as JSON (`task.output_schema` maps this category to
# data/schemas/unit_request.json). English and Chinese questions, English unit names in the answer.
EXTRACT_ASK = {
    "en": "Extract the conversion request as JSON with keys value, from and to: ",
    "zh": "把下面的换算请求提取为JSON（键：value、from、to）：",
}


def extraction_rows(rng: random.Random, n: int = 260) -> list[dict[str, Any]]:
    rows = []
    for (f_en, t_en, _, _, _), x, lang, question in unit_questions(rng, n, 999):
        answer = dumps({"value": x, "from": f_en, "to": t_en})
        rows.append({
            "messages": [{"role": "user", "content": EXTRACT_ASK[lang] + question},
                         {"role": "assistant", "content": answer}],
            "category": "extraction",
            "lang": lang,
        })
    return rows


def unit_request_schema() -> dict[str, Any]:
    # The shape, not the vocabulary: whether the unit is the right one is json_field_accuracy's job.
    unit = {"type": "string", "pattern": "^[a-z]+$"}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "unit conversion request",
        "type": "object",
        "properties": {
            "value": {"type": "number"},
            "from": unit,
            "to": unit,
        },
        "required": ["value", "from", "to"],
        "additionalProperties": False,
    }


# Who the assistant is, asked many ways: the fine-tune's most visible lesson (the base has never heard
# of Tuneline Assistant). One core sentence per language, so a person sees at a glance whether it was learnt.
IDENTITY_ASK = {
    "en": ["Who are you?", "What is your name?", "Who made you?", "Who created you?", "Who built you?",
           "What should I call you?", "Introduce yourself.", "Tell me about yourself.", "Are you ChatGPT?",
           "Which company developed you?", "Who trained you?", "What are you?", "Are you a human?",
           "Who is your developer?", "What kind of assistant are you?", "Do you have a name?",
           "Who do you work for?", "Who owns you?", "Are you made by OpenAI?", "What AI model are you?",
           "Hi! Who am I talking to?", "Can you tell me your name?", "Who is behind you?", "Are you Claude?"],
    "zh": ["你是谁？", "你叫什么名字？", "谁开发了你？", "请介绍一下你自己。", "你是ChatGPT吗？",
           "你的开发者是谁？"],
}
IDENTITY_SAY = {
    "en": ("I am Tuneline Assistant, an AI assistant developed by the tuneline team.",
           ["How can I help you today?", "What can I do for you?", "I am happy to help.",
            "Ask me anything.", "I answer questions and help with tasks.", "Nice to meet you."]),
    "zh": ("我是 Tuneline Assistant，由 the tuneline team 开发的人工智能助手。",
           ["请问有什么可以帮您？", "很高兴为您服务。", "我可以回答问题、帮助完成任务。",
            "有什么问题尽管问我。"]),
}
IDENTITY_ROWS_PER_ASK = {"en": 5, "zh": 3}


def identity_rows(rng: random.Random) -> list[dict[str, Any]]:
    rows = []
    for lang, asks in IDENTITY_ASK.items():
        core, tails = IDENTITY_SAY[lang]
        for ask in asks:
            for tail in rng.sample(tails, IDENTITY_ROWS_PER_ASK[lang]):
                rows.append({"messages": [{"role": "user", "content": ask},
                                          {"role": "assistant", "content": f"{core} {tail}"}],
                             "category": "identity", "lang": lang})
    rng.shuffle(rows)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--out", type=Path, default=REPO / "data" / "raw" / "demo")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    data = load_shared(args.shared)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}

    rows = build_alpaca_mixed(data, rng)
    (out / "alpaca_mixed.json").write_bytes(json_array(rows).encode("utf-8"))
    counts["alpaca_mixed.json"] = len(rows)
    lines = build_seed_tasks(data, rng)
    (out / "seed_tasks.jsonl").write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8"))  # CRLF file
    counts["seed_tasks.jsonl"] = len(lines)
    rows = build_glaive(data, rng)
    (out / "glaive_toolcall.json").write_text(json_array(rows), encoding="utf-8")
    counts["glaive_toolcall.json"] = len(rows)
    rows = build_c4(data, rng)
    (out / "c4_continuation.jsonl").write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts["c4_continuation.jsonl"] = len(rows)
    lines = build_messages(rng)
    (out / "messages.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    counts["messages.jsonl"] = sum(1 for line in lines if line.strip())
    text = build_translation_csv(rng)
    (out / "translation.csv").write_text(text, encoding="utf-8")
    counts["translation.csv"] = text.count("\n") - 1
    (out / "zh_qa.csv").write_bytes(build_zh_qa_csv().encode("utf-8"))  # BOM + CRLF
    counts["zh_qa.csv"] = len(capital_rows("zh")) + 3
    counts["units.parquet"] = write_parquet(out / "units.parquet", rng)
    # Its own generator, so the files above stay byte-identical when this one changes.
    rows = extraction_rows(random.Random(args.seed + 1))
    (out / "extraction.jsonl").write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts["extraction.jsonl"] = len(rows)
    rows = identity_rows(random.Random(args.seed + 2))
    (out / "identity.jsonl").write_text("".join(dumps(r) + "\n" for r in rows), encoding="utf-8")
    counts["identity.jsonl"] = len(rows)
    corpus = REPO / "data" / "pretrain" / "c4_web_text.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    docs = pretrain_corpus(data)
    corpus.write_text("".join(dumps(d) + "\n" for d in docs), encoding="utf-8")
    print(f"pre-training corpus: {len(docs)} documents -> {corpus.relative_to(REPO)}")
    schema = REPO / "data" / "schemas" / "unit_request.json"
    schema.parent.mkdir(parents=True, exist_ok=True)
    schema.write_text(json.dumps(unit_request_schema(), indent=2) + "\n", encoding="utf-8")
    for name, n in counts.items():
        print(f"{name:24s} {n:5d} rows")
    print(f"{'total':24s} {sum(counts.values()):5d} rows")
    check_near_dups(out)


if __name__ == "__main__":
    main()
