"""IoT device classification on a Tofino-class switch (Alchemy-style Python frontend).

Run: homunculus compile examples/iot/compile_iot.py -o out/iot-py
"""

from pathlib import Path

import pandas as pd
from sklearn.model_selection import train_test_split

from homunculus.alchemy import DataLoader, Feature, Model, Platforms, Verdict, generate

HERE = Path(__file__).parent


@DataLoader(features=[
    Feature("ip_len", 16, field="ipv4.total_len"),
    Feature("ttl", 8, field="ipv4.ttl"),
    Feature("proto", 8, field="ipv4.protocol"),
    Feature("dscp_byte", 8, field="ipv4.diffserv"),
    Feature("src_port", 16),  # unbound: carried in the Homunculus feature header
    Feature("dst_port", 16),
    Feature("iat_bucket", 8),
])
def load_iot():
    table = pd.read_csv(HERE / "iot_features.csv")
    x, y = table.drop(columns="device").to_numpy(), table["device"].to_numpy()
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0,
                                                        stratify=y)
    return x_train, y_train, x_test, y_test


iot = Model("iot", data=load_iot, metric="f1_macro", algorithms=["dt", "rf", "xgb", "gnb"],
            verdict=Verdict.dscp({"camera": 34, "speaker": 26}))

tofino = Platforms.Tofino()
tofino.constrain(performance={"throughput_gpps": 1.0, "latency_ns": 600},
                 resources={"stages": 12, "tcam_kbit": 800, "entries": 2000})
tofino.schedule(iot)

if __name__ == "__main__":
    generate(tofino, "out/iot-py", trials=30, seed=0)
