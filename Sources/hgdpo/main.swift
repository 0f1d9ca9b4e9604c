print("hgdpo")
