"""Summarizes an Nsight Compute CSV (ncu --section SpeedOfLight --csv) of
cuda/harness/profile_one.py by kernel for the second forward + backward (the first is warm-up):
launches, total duration, and the duration-weighted SM, DRAM and memory throughput (percent of
the GPU's peak). Used by scripts/device/ncu_profile.sh; Docs/CUDA.md reads its output.

    python3 scripts/device/ncu_stages.py ncu_all.csv
"""
import csv, collections, re, sys
rows=[r for r in csv.reader(open(sys.argv[1])) if r]
hdr=next(i for i,r in enumerate(rows) if "Kernel Name" in r)
h=rows[hdr]; data=rows[hdr+1:]
ID,K,M,U,V=[h.index(x) for x in ("ID","Kernel Name","Metric Name","Metric Unit","Metric Value")]
per=collections.OrderedDict()
for r in data:
    if len(r)<=V or not r[V].replace(',','').replace('.','').isdigit(): continue
    per.setdefault(int(r[ID]),{"k":r[K]})[r[M]]=(float(r[V].replace(',','')),r[U])
ids=sorted(per)
def base(k):
    m=re.search(r'cce::(\w+)',k)
    if m: return m.group(1)
    m=re.search(r'(\w+Kernel|\w+_kernel)',k)
    return 'torch:'+(m.group(1) if m else k[:30])
seq=[(i,base(per[i]["k"])) for i in ids]
# the second forward+backward: from the second lse_partial_kernel to the end, library kernels plus any torch kernel between
starts=[j for j,(i,n) in enumerate(seq) if n=='lse_partial_kernel']
call=seq[starts[1]:]
agg=collections.OrderedDict()
for i,n in call:
    m=per[i]; d=m['Duration'][0]/1e3
    a=agg.setdefault(n,[0,0.0,0.0,0.0,0.0])
    a[0]+=1; a[1]+=d; a[2]+=d*m['Compute (SM) Throughput'][0]; a[3]+=d*m['DRAM Throughput'][0]; a[4]+=d*m['Memory Throughput'][0]
tot=sum(a[1] for a in agg.values())
print(f"second call: {len(call)} kernels, {tot/1e3:.2f} ms of kernel time")
for n,a in agg.items():
    print(f"{n:28s} x{a[0]:3d} {a[1]/1e3:8.2f} ms  SM {a[2]/a[1]:5.1f}%  DRAM {a[3]/a[1]:5.1f}%  mem {a[4]/a[1]:5.1f}%")
