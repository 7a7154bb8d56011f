set terminal pngcairo size 1260,420 noenhanced font ',10'
set output '/work/main/results/bench-pass.png'
set multiplot layout 1,3 title 'MGLRU aging pass over KVM guest memory (TCG, nested KVM), mean +- sd'
set logscale x 2; set xlabel 'total guest memory (MiB)'; set ylabel 'ms per GiB aged'
set key top left; set yrange [0:*]; set grid
set title '1 vCPU(s)'
plot '/work/main/results/bench-pass.dat' index 0 using 2:3:6 with yerrorlines title '0x8 off (6.12)', '' index 0 using 2:4:7 with yerrorlines title '0x8 on (batched)', '' index 0 using 2:5:8 with yerrorlines title 'floor (no secondary MMU)'
set title '2 vCPU(s)'
plot '/work/main/results/bench-pass.dat' index 1 using 2:3:6 with yerrorlines title '0x8 off (6.12)', '' index 1 using 2:4:7 with yerrorlines title '0x8 on (batched)', '' index 1 using 2:5:8 with yerrorlines title 'floor (no secondary MMU)'
set title '4 vCPU(s)'
plot '/work/main/results/bench-pass.dat' index 2 using 2:3:6 with yerrorlines title '0x8 off (6.12)', '' index 2 using 2:4:7 with yerrorlines title '0x8 on (batched)', '' index 2 using 2:5:8 with yerrorlines title 'floor (no secondary MMU)'
unset multiplot
