"""A seeded generator of realistic bank-churn customers.

The distributions follow the public bank-churn data sets' shape: three
countries (France half of the customers), ages around 39, a third of balances
at zero, most customers with one or two products, about 20% churn. Churn is
driven by age, country, activity, number of products, balance and gender, plus
noise, so a good model reaches an AUC around 0.85, not 1.0.

    bankchurn-generate --rows 10000 --seed 42 --out data/bank_churn.csv
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def generate(rows: int = 10_000, seed: int = 42) -> pd.DataFrame:
    if rows < 100:
        raise ValueError("rows must be at least 100")
    rng = np.random.default_rng(seed)
    geography = rng.choice(["France", "Germany", "Spain"], size=rows, p=[0.50, 0.25, 0.25])
    gender = rng.choice(["Male", "Female"], size=rows, p=[0.545, 0.455])
    age = np.clip(rng.normal(39, 10.5, rows).round(), 18, 92).astype(int)
    tenure = rng.integers(0, 11, rows)
    has_balance = rng.random(rows) > 0.36
    balance = np.where(has_balance, np.clip(rng.normal(119_800, 30_000, rows), 3_000, 250_000), 0.0).round(2)
    products = rng.choice([1, 2, 3, 4], size=rows, p=[0.508, 0.459, 0.027, 0.006])
    has_card = rng.random(rows) < 0.70
    active = rng.random(rows) < 0.515
    salary = rng.uniform(11.58, 199_992.48, rows).round(2)
    credit = np.clip(rng.normal(650, 96.7, rows).round(), 350, 850).astype(float)

    logit = (
        -1.55
        + 0.095 * (age - 39)
        + 0.75 * (geography == "Germany")
        + 0.45 * (gender == "Female")
        - 1.10 * active
        + 0.35 * has_balance
        - 1.35 * (products == 2)
        + 2.40 * (products >= 3)
        - 0.0008 * (credit - 650)
        - 0.02 * (tenure - 5)
        + rng.normal(0, 0.3, rows)
    )
    exited = (rng.random(rows) < 1 / (1 + np.exp(-logit))).astype(int)
    return pd.DataFrame(
        {
            "CreditScore": credit,
            "Geography": geography,
            "Gender": gender,
            "Age": age,
            "Tenure": tenure,
            "Balance": balance,
            "NumOfProducts": products,
            "HasCrCard": has_card,
            "IsActiveMember": active,
            "EstimatedSalary": salary,
            "Exited": exited,
        }
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a seeded synthetic bank-churn CSV.")
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        frame = generate(args.rows, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(args.out, index=False)
    print(f"wrote {len(frame)} rows to {args.out} (churn rate {frame['Exited'].mean():.1%}, seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
