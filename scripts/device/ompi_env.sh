# Open MPI unpacked in $M (usr/ and deps/, scripts/device/make_mpi_bundle.sh): source with M set.
# One host: no ssh (plm isolated), shared memory without CMA (btl self,vader), as root.
export OPAL_PREFIX=$M/usr
export PATH=$M/usr/bin:$PATH
export LD_LIBRARY_PATH=$M/usr/lib/x86_64-linux-gnu:$M/usr/lib/x86_64-linux-gnu/pmix2/lib:$M/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export PMIX_INSTALL_PREFIX=$M/usr/lib/x86_64-linux-gnu/pmix2
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_plm=isolated OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader OMPI_MCA_btl_vader_single_copy_mechanism=none
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_mca_base_component_show_load_errors=1
export PMIX_MCA_mca_base_component_path=$M/usr/lib/x86_64-linux-gnu/pmix2/lib/pmix
export PMIX_MCA_mca_base_component_show_load_errors=0
