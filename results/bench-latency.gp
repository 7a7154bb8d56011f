set terminal pngcairo size 700,450 noenhanced font ',10'
set output '/work/main/results/bench-latency.png'
set title 'guest write latency to re-faulted pages, 1G x 2 vCPUs'
set logscale x; set xlabel 'latency (us, log scale)'; set ylabel 'fraction of writes <= x'
set key bottom right; set grid; set yrange [0:1]
plot '/work/main/results/bench-latency.dat' index 0 using 1:2 with lines lw 2 title 'no aging',      '' index 1 using 1:2 with lines lw 2 title 'aging, 0x8 on',      '' index 2 using 1:2 with lines lw 2 title 'aging, 0x8 off'
