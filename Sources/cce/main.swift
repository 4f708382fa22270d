import CutCrossEntropy
print("cce")
