set terminal pngcairo size 700,450 noenhanced font ',10'
set output '/work/main/results/7.3/bench-latency.png'
set title 'guest write latency to re-faulted pages, 256M x 2 vCPUs'
set logscale x; set xlabel 'latency (us, log scale)'; set ylabel 'fraction of writes <= x'
set key bottom right; set grid; set yrange [0:1]
plot '/work/main/results/7.3/bench-latency.dat' index 0 using 1:2 with lines lw 2 title 'no aging(base boot)', '/work/main/results/7.3/bench-latency.dat' index 1 using 1:2 with lines lw 2 title 'no aging', '/work/main/results/7.3/bench-latency.dat' index 2 using 1:2 with lines lw 2 title 'base(7.3.4)', '/work/main/results/7.3/bench-latency.dat' index 3 using 1:2 with lines lw 2 title '0x8 off', '/work/main/results/7.3/bench-latency.dat' index 4 using 1:2 with lines lw 2 title '0x8 on'
