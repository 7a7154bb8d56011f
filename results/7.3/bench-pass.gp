set terminal pngcairo size 420,460 noenhanced font ',10'
set output '/work/main/results/7.3/bench-pass.png'
set multiplot layout 1,1 title 'MGLRU aging pass over KVM guest memory (TCG, nested KVM): mean, bars = 95 % interval of the mean'
set logscale x 2; set xlabel 'total guest memory (MiB)'; set ylabel 'ms per GiB aged'
set key below; set yrange [0:*]; set grid; set bars 2; set offsets graph 0.06, graph 0.06, graph 0.05, 0
set title '2 vCPU(s)'
plot '/work/main/results/7.3/bench-pass.dat' index 0 using ($2*0.940):3:4:5 with yerrorlines title 'base(7.3.4)', '/work/main/results/7.3/bench-pass.dat' index 0 using ($2*0.980):6:7:8 with yerrorlines title '0x8 off', '/work/main/results/7.3/bench-pass.dat' index 0 using ($2*1.020):9:10:11 with yerrorlines title '0x8 on', '/work/main/results/7.3/bench-pass.dat' index 0 using ($2*1.060):12:13:14 with yerrorlines title 'floor'
unset multiplot
